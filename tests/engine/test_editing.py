"""Editing a clip: inpainting a time range and continuing a clip keep the start clip's samples exactly
outside the generated part (bar a short cross-fade at each edge), on one-shot and windowed clips, at
the mel's rate and through a band extension; the settings are checked everywhere they enter and a
resumed job refuses changed edit settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.audio.splice import EDGE_FADE_SECONDS, keep_original
from reaudio.engine.cli import main
from reaudio.engine.denoising.known_regions import keep_mask
from reaudio.engine.jobs.prompts import read_prompt_file
from reaudio.engine.pipeline import Engine, Request
from reaudio.engine.settings import SettingError, canonical_ranges


@pytest.fixture(scope="module")
def engine(tiny_artifacts):
    return Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu")


def _start_clip(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)


def _fade(rate: int) -> int:
    return round(EDGE_FADE_SECONDS * rate)


def test_time_ranges_take_one_written_form_and_refuse_what_is_not_one():
    assert canonical_ranges("1.20:2, 3:3.5") == "1.2:2,3:3.5"
    assert canonical_ranges([[1.2, 2.0], [3, 3.5]]) == "1.2:2,3:3.5"
    for bad, why in (
        ("1.2-2.0", "not a time range"),
        ("2:1", "START < END"),
        ("1:2,1.5:3", "starts before the range ahead of it ends"),
        ([[1]], "pairs"),
    ):
        with pytest.raises(SettingError, match=why):
            canonical_ranges(bad)


def test_keep_mask_ramps_inside_each_range_only():
    keep = keep_mask(20, [(5, 12)], blend=3)
    assert (keep[:5] == 1).all() and (keep[12:] == 1).all()
    assert keep[5] < 1 and keep[11] < 1 and (keep[8:9] == 0).all()
    assert np.array_equal(keep_mask(10, [(0, 4)], blend=2)[:2], [0, 0])  # the clip's start: no ramp needed


def test_inpainting_keeps_every_sample_outside_the_range(engine):
    rate = engine.sample_rate
    start = _start_clip(rate, 2.0)
    result = engine.generate([Request("a short high beep", init_audio=start, inpaint="0.6:1.2", seed=1, steps=4)])[0]
    out, fade = result.waveform, _fade(rate)
    assert len(out) == len(start)
    lo, hi = round(0.6 * rate), round(1.2 * rate)
    assert np.array_equal(out[: lo - fade], start[: lo - fade])
    assert np.array_equal(out[hi + fade :], start[hi + fade :])
    assert not np.allclose(out[lo:hi], start[lo:hi], atol=1e-3)  # the range was made again
    again = engine.generate([Request("a short high beep", init_audio=start, inpaint="0.6:1.2", seed=1, steps=4)])[0]
    assert np.array_equal(out, again.waveform)


@pytest.mark.parametrize("extend", [1.0, -0.75])
def test_continuation_keeps_the_clip_and_adds_the_time(engine, extend):
    rate = engine.sample_rate
    start = _start_clip(rate, 1.5, seed=2)
    request = Request("a low electrical hum", init_audio=start, extend=extend, seed=3, steps=4)
    out = engine.generate([request])[0].waveform
    added, fade = round(abs(extend) * rate), _fade(rate)
    assert len(out) == len(start) + added
    if extend > 0:
        assert np.array_equal(out[: len(start) - fade], start[: len(start) - fade])
        assert np.abs(out[len(start) :]).max() > 0
    else:
        assert np.array_equal(out[added + fade :], start[fade:])
        assert np.abs(out[:added]).max() > 0


def test_a_long_continuation_runs_window_by_window_and_keeps_the_clip(engine):
    rate, window = engine.sample_rate, engine.manifest.defaults.window_seconds
    start = _start_clip(rate, 1.0, seed=4)
    request = Request("rapid clicking", init_audio=start, extend=2.5 * window, seed=5, steps=3)
    resolved = engine.planner.resolve(request)
    assert resolved.windowed and resolved.edit.generated == ((len(start), resolved.samples),)
    out = engine.generate([request])[0].waveform
    assert len(out) == len(start) + round(2.5 * window * rate)
    assert np.array_equal(out[: len(start) - _fade(rate)], start[: len(start) - _fade(rate)])


def test_edits_through_a_band_extension_keep_the_clip_at_the_output_rate(tiny_artifacts):
    full = Engine.from_bundle(tiny_artifacts / "bundle-fullband", backend="cpu")
    start = _start_clip(full.sample_rate, 1.0, seed=6)
    out = full.generate([Request("a rising chirp", init_audio=start, inpaint="0.3:0.6", seed=1, steps=3)])[0]
    lo = round(0.3 * full.sample_rate) - _fade(full.sample_rate)
    assert out.sample_rate == 16000 and np.array_equal(out.waveform[:lo], start[:lo])


def test_edit_settings_are_checked_where_they_enter(engine, tmp_path, capsys):
    start = _start_clip(engine.sample_rate, 1.0)
    for request, why in (
        (Request("x", inpaint="0.1:0.2"), "inpaint edits a start clip: it needs init_audio"),
        (Request("x", init_audio=start, inpaint="0.1:0.2", extend=1.0), "give inpaint or extend, not both"),
        (Request("x", init_audio=start, inpaint="1.5:1.8"), "starts after the start clip's end"),
        (Request("x", init_audio=start, inpaint="0.1:0.2", duration=2.0), "duration and inpaint/extend exclude"),
        (Request("x", init_audio=start, inpaint="a:b"), "not a time range"),
    ):
        with pytest.raises(ValueError, match=why):
            engine.planner.resolve(request)
    sf.write(tmp_path / "start.wav", start, engine.sample_rate)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(
        json.dumps({"prompt": "ok", "init_audio": "start.wav", "inpaint": [[0.1, 0.3]]})
        + "\n"
        + json.dumps({"prompt": "bad", "init_audio": "start.wav", "inpaint": "0.3:0.1"})
        + "\n"
        + json.dumps({"prompt": "lonely", "extend": 2.0})
        + "\n"
    )
    with pytest.raises(ValueError) as info:
        read_prompt_file(prompts)
    message = str(info.value)
    assert f"{prompts}:2: inpaint: '0.3:0.1': need 0 <= START < END" in message
    assert f"{prompts}:3: extend edits a start clip: it needs init_audio on the same row" in message
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", str(prompts), "--out", str(tmp_path / "o"), "--inpaint", "1-2", "--dry-run"])
    assert exit_info.value.code == 2 and "argument --inpaint: '1-2' is not a time range" in capsys.readouterr().err


def test_a_resumed_job_refuses_changed_edit_settings(tiny_artifacts, tmp_path, capsys):
    rate = 8000
    sf.write(tmp_path / "start.wav", _start_clip(rate, 1.0), rate)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a short high beep\n")
    out = tmp_path / "lib"
    base = ["generate", str(prompts), "--bundle", str(tiny_artifacts / "bundle"), "--out", str(out), "-q"]
    base += ["--init-audio", str(tmp_path / "start.wav"), "--steps", "3", "--backend", "cpu"]
    assert main([*base, "--inpaint", "0.2:0.5"]) == 0
    entry = json.loads((out / "library.jsonl").read_text().splitlines()[0])
    assert entry["settings"]["inpaint"] == "0.2:0.5" and entry["settings"]["extend"] is None
    written, _ = sf.read(out / entry["file"], dtype="float32")
    original, _ = sf.read(tmp_path / "start.wav", dtype="float32")
    lo = round(0.2 * rate) - _fade(rate)
    assert np.array_equal(written[:lo], original[:lo])  # PCM_16 in, PCM_16 out: the same samples
    assert main([*base, "--inpaint", "0.2:0.5"]) == 0  # the same job: nothing to do
    capsys.readouterr()
    assert main([*base, "--inpaint", "0.2:0.6"]) == 2
    assert "inpaint" in capsys.readouterr().err


def test_keep_original_fades_on_the_kept_side_only():
    original, decoded = np.ones(100, dtype=np.float32), np.zeros(100, dtype=np.float32)
    out = keep_original(decoded, original, ((40, 60),), fade=10)
    assert (out[:30] == 1).all() and (out[70:] == 1).all() and (out[40:60] == 0).all()
    assert np.all(np.diff(out[30:40]) < 0) and np.all(np.diff(out[60:70]) > 0)


def test_the_generated_part_comes_out_at_the_start_clips_level(engine):
    """The model hears the start clip at its training level; what it writes is brought back to the
    clip's own: a start clip 20 dB quieter gives the same edit, 20 dB quieter, kept part and all."""
    start = _start_clip(engine.sample_rate, 1.5, seed=7)
    loud, quiet = (
        engine.generate([Request("a burst of white noise", init_audio=w, inpaint="0.5:1.0", seed=2, steps=3)])[0]
        for w in (start, 0.1 * start)
    )
    assert np.allclose(quiet.waveform, 0.1 * loud.waveform, rtol=1e-4, atol=1e-6)
