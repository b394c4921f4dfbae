"""What the neighbours bring to a clip (``neighbour_context``): both their captions and their audio, or
one part alone, the other masked out row by row; the paper's retrieval-type ablation at inference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file
from reaudio.engine.pipeline import Engine, Request


@pytest.fixture(scope="module")
def engine(tiny_artifacts):
    return Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", threads=1)


def _request(**settings) -> Request:
    return Request(prompt="a door slams", seed=3, steps=3, duration=1.0, **settings)


def test_each_choice_masks_out_only_the_other_part(engine):
    resolved = engine.planner.resolve_all(
        [_request(), _request(neighbour_context="captions"), _request(neighbour_context="audio")]
    )
    assert [r.neighbour_context for r in resolved] == ["both", "captions", "audio"]
    conditions, neighbours, _ = engine._conditions(resolved)
    text, audio = conditions["retrieved_text_mask"], conditions["retrieved_audio_mask"]
    assert text[0].any() and audio[0].any()  # the same prompt: the same neighbours in every row
    np.testing.assert_array_equal(text[1], text[0])
    assert not audio[1].any()
    np.testing.assert_array_equal(audio[2], audio[0])
    assert not text[2].any()
    # The tokens and the neighbours recorded stay the database's: only what the UNet attends to changes.
    for name in ("retrieved_text", "retrieved_audio"):
        np.testing.assert_array_equal(conditions[name][1], conditions[name][0])
    assert neighbours[1] == neighbours[0] == neighbours[2]
    # The masks gathered from the database are not changed for the batches after.
    again, _, _ = engine._conditions(resolved[:1])
    np.testing.assert_array_equal(again["retrieved_audio_mask"][0], audio[0])


def test_one_part_alone_changes_the_clip_and_stays_deterministic(engine):
    both, captions, audio, captions_again = engine.generate(
        [
            _request(),
            _request(neighbour_context="captions"),
            _request(neighbour_context="audio"),
            _request(neighbour_context="captions"),
        ]
    )
    assert not np.allclose(both.waveform, captions.waveform)
    assert not np.allclose(captions.waveform, audio.waveform)
    np.testing.assert_array_equal(captions.waveform, captions_again.waveform)


def test_a_part_alone_needs_neighbours_and_a_bundle_that_feeds_both(engine):
    with pytest.raises(ValueError, match="request 0: neighbour_context=audio needs neighbours"):
        engine.planner.resolve_all([_request(neighbour_context="audio", k=0)])
    with pytest.raises(ValueError, match="request 0: neighbour_context='all'; valid: both, captions, audio"):
        engine.planner.resolve_all([_request(neighbour_context="all")])
    planner = engine.planner
    spec = planner.manifest.retrieval
    try:
        planner.manifest = replace(planner.manifest, retrieval=replace(spec, contexts=("retrieved_text",)))
        with pytest.raises(ValueError, match="through retrieved_text, so captions cannot be kept alone"):
            planner.resolve_all([_request(neighbour_context="captions")])
        assert planner.resolve_all([_request()])[0].neighbour_context == "both"
    finally:
        planner.manifest = replace(planner.manifest, retrieval=spec)


def test_a_prompt_row_sets_it_and_a_wrong_value_names_its_line(tmp_path):
    good = tmp_path / "p.csv"
    good.write_text("prompt,neighbour_context\na door slams,audio\nrain,\n")
    rows = read_prompt_file(good)
    assert [r.neighbour_context for r in rows] == ["audio", None]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,neighbour_context\na door slams,text\n")
    with pytest.raises(PromptFileError, match=r"bad.csv:2.*neighbour_context.*both, captions, audio"):
        read_prompt_file(bad)
