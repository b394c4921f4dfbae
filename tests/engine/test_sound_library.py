"""Libraries as sound designers use them: BS.1770 loudness, true peak, formats and embedded tags."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.audio.loudness import integrated_lufs, loudness_gain_db, true_peak_db
from reaudio.engine.audio.postprocess import PostProcess
from reaudio.engine.audio.tags import ClipTags
from reaudio.engine.jobs.library import Library

SR = 48000


def _sine(freq, dbfs, seconds=3.0, sr=SR, phase=0.0):
    t = np.arange(int(seconds * sr)) / sr
    return 10 ** (dbfs / 20) * np.sin(2 * np.pi * freq * t + phase)


def _pink(seconds, rms_dbfs, seed=0):
    rng = np.random.default_rng(seed)
    spectrum = np.fft.rfft(rng.standard_normal(int(seconds * SR)))
    freqs = np.fft.rfftfreq(int(seconds * SR), 1 / SR)
    spectrum[1:] /= np.sqrt(freqs[1:])  # 1/f power
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, int(seconds * SR))
    return x / np.sqrt(np.mean(x**2)) * 10 ** (rms_dbfs / 20)


def test_a_1khz_sine_reads_as_bs1770_says():
    # BS.1770-4: a 0 dBFS 1 kHz sine in one channel reads -3.01 LKFS; loudness follows level dB for dB.
    assert integrated_lufs(_sine(1000, 0.0), SR) == pytest.approx(-3.01, abs=0.1)
    assert integrated_lufs(_sine(1000, -20.0), SR) == pytest.approx(-23.01, abs=0.1)
    assert integrated_lufs(np.zeros(SR), SR) == float("-inf")


def test_clips_shorter_than_a_block_are_measured_at_every_length():
    # Below 400 ms the clip is one block; lengths whose len/rate rounds up past the clip were refused.
    rng = np.random.default_rng(0)
    for n in [104, 105, 118, 119, 180, 182, *range(2, 9000, 97)]:
        value = integrated_lufs(rng.normal(0, 0.1, n).astype(np.float32), 22050)
        assert value == float("-inf") or -40 < value < 0, (n, value)


def test_gating_leaves_out_silence_and_quiet_passages():
    pink = _pink(8.0, -20.0)
    alone = integrated_lufs(pink, SR)
    # The absolute gate (-70 LUFS) drops silence; the relative gate (-10 LU) drops a part 20 dB down.
    # An RMS meter would read 3 dB (silence) and 2.96 dB (quiet part) lower; what remains here are
    # the few 400-ms blocks that straddle the boundary.
    assert integrated_lufs(np.concatenate([pink, np.zeros_like(pink)]), SR) == pytest.approx(alone, abs=0.2)
    assert integrated_lufs(np.concatenate([pink, 0.1 * _pink(8.0, -20.0, seed=1)]), SR) == pytest.approx(alone, abs=0.2)
    # K-weighting: the same RMS level reads louder at 4 kHz (the head's shelf) than at 60 Hz (cut).
    assert (
        integrated_lufs(_sine(4000, -20), SR)
        > integrated_lufs(_sine(1000, -20), SR)
        > integrated_lufs(_sine(60, -20), SR)
    )


def test_true_peak_sees_the_peaks_between_samples():
    # A sine at a quarter of the rate, sampled 45 degrees off its crests: samples reach -3.01 dBFS,
    # the waveform itself 0 dBFS. Faded in and out so the edges add no ringing of their own.
    x = _sine(SR / 4, 0.0, seconds=1.0, phase=np.pi / 4)
    fade = np.ones_like(x)
    fade[:480], fade[-480:] = np.linspace(0, 1, 480), np.linspace(1, 0, 480)
    x *= fade
    assert 20 * np.log10(np.abs(x).max()) == pytest.approx(-3.01, abs=0.01)
    assert true_peak_db(x, SR) == pytest.approx(0.0, abs=0.1)


def test_the_loudness_target_yields_to_the_true_peak_ceiling_by_gain_only():
    pink = _pink(3.0, -30.0)
    gain = loudness_gain_db(pink, SR, -23.0, -1.0)
    assert integrated_lufs(pink * 10 ** (gain / 20), SR) == pytest.approx(-23.0, abs=0.05)
    click = np.zeros(SR)
    click[SR // 2] = 0.05  # loudness far below its peak: the ceiling decides
    out, rate, gain = PostProcess(loudness_lufs=-14.0, true_peak_db=-1.0).finish(click, SR)
    assert true_peak_db(out, SR) == pytest.approx(-1.0, abs=0.05) and integrated_lufs(out, SR) < -14.0
    assert np.corrcoef(out, click)[0, 1] > 0.9999  # scaled, not clipped


def test_postprocess_trims_and_resamples_once():
    rate = 8000
    x = np.zeros(3 * rate, np.float32)
    x[rate : 2 * rate] = 0.1 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    trimmed, r, _ = PostProcess(trim_db=-40).finish(x, rate)
    assert r == rate and rate <= len(trimmed) <= rate + 0.02 * rate + 2
    up, r, gain = PostProcess(sample_rate=48000).finish(x, rate)
    assert r == 48000 and len(up) == 6 * len(x) and gain == 0.0
    spectrum = np.abs(np.fft.rfft(up))
    assert np.fft.rfftfreq(len(up), 1 / r)[spectrum.argmax()] == pytest.approx(440, abs=1)
    for bad, match in (
        (dict(true_peak_db=3), "between -60 and 0"),
        (dict(sample_rate=12345), "valid: 16000"),
        (dict(loudness_lufs=-90), "between -70 and 0"),
    ):
        with pytest.raises(ValueError, match=match):
            PostProcess(**bad)


@pytest.mark.parametrize("fmt,subtype", [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"), ("flac", "PCM_24")])
def test_files_carry_their_description_where_library_tools_look(tmp_path, fmt, subtype):
    library = Library(tmp_path, fmt, subtype=subtype)
    audio = (0.3 * _pink(1.0, -20.0)).astype(np.float32)
    tags = ClipTags(
        title="rain on a tin roof",
        description="rain on a tin roof (reaudio, seed 7)",
        date="2026-12-01",
        time="10:00:00",
        extra={"id": "rain#0", "prompt": "rain on a tin roof", "seed": "7"},
    )
    entry = library.write(f"rain.{fmt}", audio, SR, {"key": "rain#0"}, tags)
    path = tmp_path / f"rain.{fmt}"
    info = sf.info(str(path))
    assert info.subtype == subtype and info.samplerate == SR
    back, _ = sf.read(str(path))
    assert np.abs(back - audio).max() < (1e-4 if subtype == "PCM_16" else 1e-6)  # the audio is intact
    assert entry["loudness_lufs"] == pytest.approx(integrated_lufs(audio, SR), abs=0.01)
    assert entry["true_peak_db"] == pytest.approx(true_peak_db(audio, SR), abs=0.01)
    if fmt == "wav":
        from wavinfo import WavInfoReader

        wav = WavInfoReader(str(path))
        assert wav.bext.description == "rain on a tin roof (reaudio, seed 7)"
        assert wav.bext.originator == "reaudio" and wav.bext.originator_ref == "rain#0"
        assert wav.bext.originator_date == "2026-12-01" and wav.bext.version == 2
        assert wav.bext.loudness_value == pytest.approx(entry["loudness_lufs"], abs=0.01)
        assert wav.bext.max_true_peak == pytest.approx(entry["true_peak_db"], abs=0.01)
        assert wav.info.title == "rain on a tin roof" and "seed=7" in wav.info.comment
    else:
        from mutagen.flac import FLAC

        comments = FLAC(str(path))
        assert comments["TITLE"] == ["rain on a tin roof"] and comments["REAUDIO_SEED"] == ["7"]
        assert comments["DESCRIPTION"] == ["rain on a tin roof (reaudio, seed 7)"]
    with pytest.raises(ValueError, match="FLOAT.*not available for flac"):
        Library(tmp_path / "f", "flac", subtype="FLOAT")


def test_a_job_writes_48k_24_bit_at_the_row_loudness(tiny_bundle, tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text("prompt,id,loudness_lufs\na short high beep,beep,-18\na low electrical hum,hum,\n")
    out = tmp_path / "lib"
    cli = [
        sys.executable,
        "-m",
        "reaudio.engine.cli",
        "generate",
        str(prompts),
        "--out",
        str(out),
        "--bundle",
        str(tiny_bundle),
        "--backend",
        "cpu",
        "--sample-rate",
        "48000",
        "--subtype",
        "PCM_24",
        "--loudness-lufs",
        "-30",
        "--true-peak-db",
        "-1",
        "--quiet",
        "--duration",
        "1.0",
    ]
    proc = subprocess.run([*cli, "--audition"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "a short high beep" in page and "a low electrical hum" in page
    entries = {e["id"]: e for e in map(json.loads, (out / "library.jsonl").read_text().splitlines())}
    for clip_id, target in (("beep", -18.0), ("hum", -30.0)):
        entry = entries[clip_id]
        info = sf.info(str(out / entry["file"]))
        assert (info.samplerate, info.subtype, entry["sample_rate"]) == (48000, "PCM_24", 48000)
        audio, _ = sf.read(str(out / entry["file"]))
        assert entry["true_peak_db"] <= -1.0 + 0.05
        # At the target unless the ceiling had to win.
        assert integrated_lufs(audio, 48000) == pytest.approx(entry["loudness_lufs"], abs=0.05)
        assert entry["loudness_lufs"] == pytest.approx(target, abs=0.1) or entry["true_peak_db"] >= -1.05
    # The same job again: nothing to do; another loudness: the clips were made otherwise.
    again = subprocess.run(cli, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    changed = subprocess.run([*cli[:-3], "--loudness-lufs", "-20", "--duration", "1.0"], capture_output=True, text=True)
    assert changed.returncode == 2 and "loudness_lufs" in changed.stderr and "--overwrite" in changed.stderr
