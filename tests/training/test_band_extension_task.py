"""Training the band extension: which clips may be targets, that it learns band levels, that its
checkpoint goes into a pack and out of it as the assembled decoder's last stage."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import soxr

torch = pytest.importorskip("torch")

from reaudio.engine.cli import main as cli  # noqa: E402
from reaudio.models.band_extension import BandExtension  # noqa: E402
from reaudio.models.checkpoint import load_checkpoint  # noqa: E402
from reaudio.training.band_measures import source_cutoff_hz, source_has_band, top_band_levels  # noqa: E402


def _coloured_noise(rate: int, seconds: float, tilt_db_per_khz: float, rng) -> np.ndarray:
    """White noise whose spectrum falls ``tilt`` dB per kHz: bright or dull sounds, each with a top band."""
    n = int(rate * seconds)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / rate)
    wave = np.fft.irfft(spectrum * 10 ** (-tilt_db_per_khz * freqs / 1000 / 20), n)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def test_a_resampled_source_is_told_from_a_dull_one(rng):
    full = _coloured_noise(44100, 2.0, 3.0, rng)  # dull: -66 dB at 22 kHz, but no cliff
    assert source_cutoff_hz(full, 44100) is None and source_has_band(full, 44100)
    for low_rate, edge in ((22050, 11025.0), (16000, 8000.0)):
        resampled = soxr.resample(soxr.resample(full, 44100, low_rate), low_rate, 44100)
        assert source_cutoff_hz(resampled, 44100) == edge
        assert not source_has_band(resampled, 44100)
    levels = top_band_levels([full, full * 0.5], [full, full], 44100)
    assert levels["pairs_with_band"] == 2 and levels["generated_db"] == pytest.approx(levels["real_db"], abs=0.01)


@pytest.fixture(scope="module")
def full_band_corpus(tmp_path_factory):
    """Coloured noises at 16 kHz (the tiny mel's rate × 2) with 8-kHz copies; one resampled up from
    8 kHz (no band above 4 kHz) and one without a full-band copy, which are never targets."""
    folder = tmp_path_factory.mktemp("fullband")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        full = _coloured_noise(16000, 1.5, [0.5, 2.0, 4.0, 7.0][i % 4], rng)
        if i == 10:
            full = soxr.resample(soxr.resample(full, 16000, 8000), 8000, 16000).astype(np.float32)
        sf.write(folder / f"c{i}.wav", soxr.resample(full, 16000, 8000), 8000)
        row = {"id": f"c{i}", "audio": f"c{i}.wav", "caption": "noise", "split": "test" if i in (3, 7) else "train"}
        if i != 11:
            sf.write(folder / f"c{i}-full.wav", full, 16000)
            row["fullband"] = f"c{i}-full.wav"
        rows.append(row)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_the_envelope_learns_band_levels_from_the_mel(full_band_corpus, tmp_path):
    out = tmp_path / "bwe"
    args = ["-q", "train", "band-extension", "--config", "tiny", "--data", str(full_band_corpus), "--out", str(out)]
    args += ["--steps", "150", "--batch-size", "8", "--lr", "3e-3", "--warmup-steps", "5", "--log-every", "1"]
    assert cli(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["clips"]["train"] == 8 and summary["clips"]["test"] == 2
    assert summary["clips"]["left_out"]["train"] == {"no full-band copy": 1, "resampled source": 1, "too short": 0}
    # The dull and bright clips' top bands differ; the mel tells them apart, a constant cannot.
    assert summary["test_level_l1"] < 0.6 * summary["test_level_l1_train_mean"]
    with open(out / "metrics.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    model = load_checkpoint(out / "final" / "band_extension")
    assert isinstance(model, BandExtension) and model.cfg.out_rate == 16000


def test_a_band_extension_checkpoint_of_another_mel_is_refused(tmp_path):
    import shutil

    from reaudio.engine.bundle.default_model import pack_path
    from reaudio.export.default_pack import add_band_extension
    from reaudio.models.checkpoint import save_checkpoint
    from reaudio.models.configs import load_config
    from reaudio.training.band_extension_task import band_extension_config

    pack = tmp_path / "pack"
    shutil.copytree(pack_path(), pack)
    before = {p.name: p.read_bytes() for p in pack.iterdir() if p.is_file()}
    save_checkpoint(tmp_path / "tiny", BandExtension(band_extension_config(load_config("tiny"))))
    with pytest.raises(ValueError, match="made for a 8000-Hz mel of 16 bands and hop 64; the pack's mel is 22050 Hz"):
        add_band_extension(pack, tmp_path / "tiny")
    assert {p.name: p.read_bytes() for p in pack.iterdir() if p.is_file()} == before  # the pack as it was
