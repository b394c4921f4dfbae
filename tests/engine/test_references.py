"""Reference clips as neighbours ("more like these"): the request's own clips become its context, made
as ``db add`` makes an item's, instead of (replace) or after (add) the database neighbours; they are
checked up front everywhere they enter, recorded in the library and are a resume key."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.cli import main
from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file
from reaudio.engine.pipeline import Engine, Request


@pytest.fixture(scope="module")
def engine(tiny_artifacts):
    return Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", threads=1)


def _tone(rate: int, seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.fixture
def clips(engine, tmp_path):
    rate = engine.sample_rate
    paths = []
    for i, (seconds, hz) in enumerate(((0.6, 440.0), (0.8, 880.0))):
        path = tmp_path / f"ref{i}.wav"
        sf.write(path, _tone(rate, seconds, hz), rate, subtype="FLOAT")
        paths.append(path)
    return paths


def _slots(engine, conditions, name="retrieved_audio"):
    info = engine.db.info
    per = info.audio_tokens if name == "retrieved_audio" else info.caption_tokens
    tokens = conditions[name].reshape(len(conditions["film"]), -1, per, conditions[name].shape[-1])
    used = conditions[f"{name}_mask"].reshape(len(conditions["film"]), -1, per).any(axis=2)
    return tokens, used


def test_replace_makes_the_reference_clips_the_only_neighbours(engine, clips):
    requests = [
        Request(prompt="a beep", seed=1, steps=3, reference=[str(p) for p in clips]),
        Request(prompt="a beep", seed=1, steps=3, duration=1.0),
    ]
    resolved = engine.planner.resolve_all(requests)
    assert resolved[0].k == 0 and resolved[1].k == engine.manifest.retrieval.k
    conditions, neighbours, _ = engine._conditions(resolved)
    tokens, used = _slots(engine, conditions)
    assert used[0].tolist()[:2] == [True, True] and not used[0][2:].any()
    expected = engine.encode_audio([sf.read(p, dtype="float32")[0] for p in clips])[1]
    np.testing.assert_allclose(tokens[0, :2], expected, atol=1e-6)
    assert [n["id"] for n in neighbours[0]] == ["reference:ref0.wav", "reference:ref1.wav"]
    assert all(n["caption"] == "a beep" for n in neighbours[0])
    # The other request of the batch keeps its database neighbours untouched.
    alone, _, _ = engine._conditions(resolved[1:])
    np.testing.assert_array_equal(_slots(engine, alone)[0][0, :3], tokens[1, :3])
    # The caption tokens are the reference caption's (the prompt's when none is given).
    caption_tokens, caption_used = _slots(engine, conditions, "retrieved_text")
    _, text, mask = engine.embed_text(["a beep"], length=engine.db.info.caption_tokens)
    np.testing.assert_allclose(caption_tokens[0, 0], text[0] * mask[0][:, None], atol=1e-6)
    assert caption_used[0, :2].all()


def test_add_puts_the_reference_clips_after_the_database_neighbours(engine, clips):
    request = Request(prompt="a beep", seed=1, steps=3, reference=[str(clips[0])], reference_mode="add", k=2)
    resolved = engine.planner.resolve_all([request])
    conditions, neighbours, _ = engine._conditions(resolved)
    _, used = _slots(engine, conditions)
    assert used[0].tolist() == [True, True, True]
    assert [n["id"].startswith("reference:") for n in neighbours[0]] == [False, False, True]


def test_references_change_the_clip_and_keep_it_deterministic(engine, clips):
    plain = engine.generate([Request(prompt="a beep", seed=3, steps=4, duration=0.8)])[0]
    refs = [Request(prompt="a beep", seed=3, steps=4, duration=0.8, reference=[str(clips[1])])] * 2
    a, b = engine.generate(refs)
    assert np.array_equal(a.waveform, b.waveform)
    assert not np.array_equal(a.waveform, plain.waveform)
    # Without a duration the clip is as long as its references (their median, at most the window).
    natural = engine.generate([Request(prompt="a beep", seed=3, steps=2, reference=[str(clips[0])])])[0]
    assert len(natural.waveform) <= round(0.6 * engine.sample_rate)


def test_bad_references_are_refused_before_any_work(engine, clips, tmp_path):
    for request, why in (
        (Request(prompt="x", reference=[str(tmp_path / "missing.wav")]), "reference.*no such file"),
        (Request(prompt="x", reference_caption="bells"), "reference_caption needs reference clips"),
        (Request(prompt="x", reference=[str(clips[0])], reference_mode="swap"), "reference_mode='swap'"),
        (Request(prompt="x", reference=[str(clips[0])] * 9), "at most 8"),
    ):
        with pytest.raises(ValueError, match=why):
            engine.planner.resolve_all([request])


def test_prompt_rows_take_references_relative_to_the_file_and_report_file_line(clips, tmp_path):
    folder = clips[0].parent
    good = folder / "p.jsonl"
    good.write_text(json.dumps({"prompt": "bells", "reference": ["ref0.wav", "ref1.wav"]}) + "\n")
    (row,) = read_prompt_file(good)
    assert row.reference == (str(folder / "ref0.wav"), str(folder / "ref1.wav"))
    csv = folder / "p.csv"
    csv.write_text("prompt,reference,reference_mode\nbells,ref0.wav;ref1.wav,add\nbells,nope.wav,\nx,,add\n")
    with pytest.raises(PromptFileError) as caught:
        read_prompt_file(csv)
    text = str(caught.value)
    assert f"{csv}:3: reference 'nope.wav'" in text and "no such file" in text
    assert f"{csv}:4: reference_mode needs reference clips on the same row" in text


def test_a_job_records_its_references_and_resume_refuses_other_ones(tiny_artifacts, clips, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "bells", "id": "b", "reference": "ref0.wav"}) + "\n")
    args = ["-q", "generate", str(prompts), "--out", str(tmp_path / "out"), "--bundle", str(tiny_artifacts / "bundle")]
    args += ["--backend", "cpu", "--steps", "2"]
    assert main(args) == 0
    entry = json.loads((tmp_path / "out" / "library.jsonl").read_text().splitlines()[0])
    assert entry["settings"]["reference"] == ["ref0.wav"] and len(entry["settings"]["reference_sha256"]) == 1
    assert entry["settings"]["reference_mode"] == "replace"
    assert entry["neighbours"] == [{"id": "reference:ref0.wav", "caption": "bells"}]
    sf.write(tmp_path / "ref0.wav", _tone(8000, 0.6, 220.0), 8000)  # the same name, another sound
    assert main(args) == 2  # a changed reference is another clip: refused without --overwrite
    assert main([*args, "--overwrite"]) == 0
