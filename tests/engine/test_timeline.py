"""Timeline prompts ("X, then Y"): each denoising window follows the prompt of the time it covers, a
window across a change mixes them by its weights; timelines are checked everywhere they enter, with
file:line errors, and are a resume key."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reaudio.engine.cli import main
from reaudio.engine.denoising.window_plans import plan_windows, segment_shares
from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file
from reaudio.engine.pipeline import Engine, Request
from reaudio.engine.settings import SettingError, canonical_timeline
from reaudio.engine.step_batching import StepBatcher

TIMELINE = "0:a door creaks;1.5:a door slams"


@pytest.fixture(scope="module")
def engine(tiny_artifacts):
    return Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", threads=1)


def test_a_timeline_has_one_written_form_and_errors_say_what_it_must_look_like():
    assert canonical_timeline("0: rain ;2.50:thunder  rolls") == "0:rain;2.5:thunder rolls"
    assert canonical_timeline([{"at": 0, "prompt": "rain"}, {"at": 2.5, "prompt": "thunder"}]) == "0:rain;2.5:thunder"
    for bad, why in (
        ("1:rain", "starts at 0"),
        ("0:rain;0:thunder", "in order"),
        ("rain", "SECONDS:PROMPT"),
        ("0:rain;x:thunder", "must be a number"),
        ([{"at": 0}], '"at": seconds'),
        (";".join(f"{i}:p{i}" for i in range(9)), "at most 8"),
    ):
        with pytest.raises(SettingError, match=why):
            canonical_timeline(bad)


def test_segment_shares_follow_the_window_weights():
    windows = plan_windows(100, 40, 10)
    shares = segment_shares(windows, [0, 50])
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert shares[0, 0] == 1.0 and shares[-1, 1] == 1.0  # the ends lie wholly in one segment
    middle = [w for w in range(len(windows)) if 0 < shares[w, 0] < 1]
    assert middle  # some window straddles the change and mixes both


def test_each_window_gets_the_conditions_of_the_segments_it_covers(engine):
    request = Request(prompt="a door", seed=1, steps=3, duration=3.0, timeline=TIMELINE)
    (resolved,) = engine.planner.resolve_all([request])
    windows = resolved.windows()
    assert resolved.windowed and resolved.window <= resolved.segments[1][0]
    conditions, neighbours, _ = engine._conditions([resolved])
    assert len(conditions["film"]) == len(windows)
    creak, slam = engine.embed_each(["a door creaks", "a door slams"])
    shares = segment_shares(windows, [s for s, _ in resolved.segments])
    for w in range(len(windows)):
        np.testing.assert_allclose(conditions["film"][w], shares[w, 0] * creak + shares[w, 1] * slam, atol=1e-6)
    assert {n["segment"] for n in neighbours[0]} == {0, 1}
    plain, _, _ = engine._conditions(engine.planner.resolve_all([Request(prompt="a door slams", k=request.k)]))
    last = int(np.argmax(shares[:, 1]))
    np.testing.assert_array_equal(conditions["retrieved_audio"][last], plain["retrieved_audio"][0])


def test_a_timeline_clip_is_deterministic_differs_from_one_prompt_and_batches_alike(engine):
    timed = Request(prompt="a door", seed=4, steps=4, duration=3.0, timeline=TIMELINE)
    plain = Request(prompt="a door", seed=4, steps=4, duration=3.0, window=1.0)
    alone = engine.generate([timed])[0].waveform
    together = engine.generate([timed, plain])  # a plain clip in a timeline's batch keeps its prompt
    assert np.array_equal(together[0].waveform, alone)
    assert np.array_equal(together[1].waveform, engine.generate([plain])[0].waveform)
    assert not np.array_equal(alone, together[1].waveform)
    batcher = StepBatcher(engine, slots=2)
    tickets = [batcher.submit(timed), batcher.submit(plain)]
    batcher.run_until_idle()
    assert np.array_equal(tickets[0].future.result().waveform, alone)


def test_bad_timelines_are_refused_before_any_work(engine, tmp_path):
    for request, why in (
        (Request(prompt="x", duration=1.0, timeline="0:a;2:b"), "past the clip's 1.00 s"),
        (Request(prompt="x", duration=3.0, timeline=TIMELINE, loop=True), "timeline and loop exclude each other"),
    ):
        with pytest.raises(ValueError, match=why):
            engine.planner.resolve_all([request])
    rows = tmp_path / "t.jsonl"
    rows.write_text(
        json.dumps({"prompt": "x", "timeline": [{"at": 0, "prompt": "rain"}, {"at": 1, "prompt": "thunder"}]})
        + "\n"
        + json.dumps({"prompt": "y", "timeline": "1:rain"})
        + "\n"
    )
    with pytest.raises(PromptFileError, match=rf"{rows}:2: timeline: a timeline starts at 0"):
        read_prompt_file(rows)


def test_a_job_records_the_timeline_and_resume_refuses_another(tiny_artifacts, tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text(f"id,prompt,timeline,duration\nd,a door,{TIMELINE},3\n")
    (row,) = read_prompt_file(prompts)
    assert row.timeline == TIMELINE
    args = ["-q", "generate", str(prompts), "--out", str(tmp_path / "out"), "--bundle", str(tiny_artifacts / "bundle")]
    args += ["--backend", "cpu", "--steps", "2"]
    assert main(args) == 0
    entry = json.loads((tmp_path / "out" / "library.jsonl").read_text().splitlines()[0])
    assert entry["settings"]["timeline"] == TIMELINE
    prompts.write_text("id,prompt,timeline,duration\nd,a door,0:a door creaks;1:a door slams,3\n")
    assert main(args) == 2  # another timeline is another clip
    assert main([*args, "--timeline", "0:ignored;1:by the row"]) == 2
