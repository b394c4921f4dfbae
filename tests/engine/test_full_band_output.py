"""A bundle whose decoder writes twice its mel's rate (a band extension in the decoder graph): the
engine's lengths, start clips, windowed clips, files and determinism at the output rate. Runs on
the toy artefacts' ``bundle-fullband`` (an untrained band extension: shapes and rates, not sound)."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.bundle.manifest import BundleError, BundleManifest
from reaudio.engine.cli import main
from reaudio.engine.pipeline import Engine, Request


@pytest.fixture(scope="module")
def engines(tiny_artifacts):
    full = tiny_artifacts / "bundle-fullband"
    if not (full / "manifest.json").is_file():
        pytest.fail(
            f"{full}: missing; make the toy artefacts again (`python -m reaudio.training.toy_bundle DIR --fp16`)"
        )
    return Engine.from_bundle(full, backend="cpu"), Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu")


def _band_share(wave: np.ndarray, rate: int, low_hz: float) -> float:
    power = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1.0 / rate)
    return float(power[freqs >= low_hz].sum() / power.sum())


def test_the_manifest_states_the_output_rate(engines):
    full, plain = engines
    m = full.manifest
    assert (m.output_rate, m.mel.sample_rate, m.sample_rate) == (16000, 8000, 16000)
    assert m.samples_per_frame == 2 * m.mel_samples_per_frame == 2 * plain.manifest.samples_per_frame
    assert plain.manifest.output_rate is None and plain.sample_rate == plain.manifest.mel.sample_rate


def test_an_output_rate_that_is_no_whole_multiple_is_refused(engines):
    data = engines[0].manifest.to_dict()
    for bad in (12000, 8000 * 5):
        with pytest.raises(BundleError, match=r"output_rate=\d+; valid: 1 to 4 times mel.sample_rate"):
            BundleManifest.from_dict({**data, "output_rate": bad})


def test_clips_come_out_at_the_output_rate_with_a_band_above_the_mels(engines):
    full, plain = engines
    request = Request("a short high beep", duration=1.0, seed=3, steps=4)
    a, b = full.generate([request])[0], plain.generate([request])[0]
    assert a.sample_rate == 16000 and len(a.waveform) == 16000
    assert b.sample_rate == 8000 and len(b.waveform) == 8000
    assert np.isfinite(a.waveform).all()
    # The plain decoder has nothing above its Nyquist frequency; the extended one writes a band there.
    assert _band_share(a.waveform, 16000, 4200.0) > 1e-4
    again = full.generate([request])[0]
    assert np.array_equal(a.waveform, again.waveform)


def test_a_windowed_clip_and_a_start_clip_at_the_output_rate(engines, rng):
    full, plain = engines
    window = full.manifest.defaults.window_seconds
    long = full.generate([Request("a low electrical hum", duration=2.5 * window, seed=1, steps=3)])[0]
    assert long.ok and len(long.waveform) == round(2.5 * window * 16000)
    assert np.isfinite(long.waveform).all()

    start = (0.3 * rng.standard_normal(16000)).astype(np.float32)
    edited = full.generate([Request("rapid clicking", init_audio=start, strength=0.5, seed=2, steps=4)])[0]
    assert edited.ok and len(edited.waveform) == 16000
    # The encoders read the mel's rate: the start clip at 16 kHz lands where its 8-kHz copy lands.
    import soxr

    frames = 16000 // full.manifest.samples_per_frame
    here = full.encode_latents([start], frames)
    there = plain.encode_latents([soxr.resample(start, 16000, 8000, quality="HQ").astype(np.float32)], frames)
    assert np.linalg.norm(here - there) / np.linalg.norm(there) < 1e-5


def test_generate_writes_files_at_the_output_rate(tiny_artifacts, tmp_path):
    out = tmp_path / "lib"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a rising chirp\n", encoding="utf-8")
    code = main(
        ["generate", str(prompts), "--bundle", str(tiny_artifacts / "bundle-fullband"), "--out", str(out)]
        + ["--steps", "3", "--duration", "0.5", "--backend", "cpu", "-q"]
    )
    assert code == 0
    files = sorted(out.glob("*.wav"))
    assert len(files) == 1
    info = sf.info(str(files[0]))
    assert info.samplerate == 16000 and info.frames == 8000
