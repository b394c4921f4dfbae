"""The decoder's log-mel calibration: what it computes, what it refuses, and that fitting finds it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reaudio.models.mel_calibration import (  # noqa: E402
    MelCalibration,
    MelCalibrationLayer,
    band_mean,
    local_mean,
)
from reaudio.training.decoder_calibration import fit_calibration  # noqa: E402


def _smooth(x: np.ndarray, passes: int = 3) -> np.ndarray:
    for _ in range(passes):
        x = local_mean(torch.from_numpy(x[None].astype(np.float32)))[0].numpy()
    return x


def test_identity_calibration_changes_nothing_and_sharpening_follows_the_formula():
    mel = torch.randn(2, 12, 5)
    same = MelCalibrationLayer(MelCalibration((1.0,) * 5, (0.0,) * 5, (0.0,) * 5))
    assert torch.equal(same(mel), mel)
    cal = MelCalibration((2.0,) * 5, (0.5,) * 5, (0.0, 1.0, 0.0, 0.0, 3.0))
    out = MelCalibrationLayer(cal)(mel)
    mapped = mel * 2 + 0.5
    t = 4  # an inner frame: the mean of frames 3, 4, 5
    band = 1
    expected = mapped[0, t, band] + (mapped[0, t, band] - mapped[0, t - 1 : t + 2, band].mean())
    assert torch.allclose(out[0, t, band], expected, atol=1e-6)
    assert torch.allclose(out[..., 0], mapped[..., 0])  # no sharpening in band 0
    assert MelCalibration.from_dict(cal.to_dict()) == cal
    across = MelCalibrationLayer(MelCalibration((1.0,) * 5, (0.0,) * 5, (0.0,) * 5, sharpen_freq=0.5))(mel)
    expected = mel[1, 2, 3] + 0.5 * (mel[1, 2, 3] - mel[1, 2, 2:5].mean())
    assert torch.allclose(across[1, 2, 3], expected, atol=1e-6)
    assert MelCalibration.from_dict({"scale": [1.0], "bias": [0.0], "sharpen": [0.0]}).sharpen_freq == 0.0


@pytest.mark.parametrize(
    "values, message",
    [
        (((1.0, 1.0), (0.0,), (0.0, 0.0)), "one value per mel band"),
        (((1.0, -1.0), (0.0, 0.0), (0.0, 0.0)), "scale must be > 0"),
        (((1.0, 1.0), (0.0, 0.0), (0.0, -0.5)), "sharpen and sharpen_freq >= 0"),
    ],
)
def test_bad_calibrations_are_refused(values, message):
    with pytest.raises(ValueError, match=message):
        MelCalibration(*values)
    with pytest.raises(ValueError, match="missing sharpen"):
        MelCalibration.from_dict({"scale": [1.0], "bias": [0.0]}, "pack.json")


def test_fitting_undoes_a_level_change_and_restores_frame_to_frame_detail():
    rng = np.random.default_rng(0)
    real = [_smooth(rng.standard_normal((200, 6)), 2) * 2 + rng.standard_normal((200, 6)) * 0.5 - 3 for _ in range(8)]
    # a "decoder" that returns a smoothed, quieter and shifted version of each clip
    decoded = [(_smooth(m, 1) + 3) * 0.5 for m in real]
    cal = fit_calibration(real, decoded)
    assert np.allclose(cal.scale, np.concatenate(real).std(0) / np.concatenate(decoded).std(0), rtol=1e-5)
    assert min(cal.sharpen) > 0.3
    out = [MelCalibrationLayer(cal)(torch.from_numpy(m[None].astype(np.float32)))[0].numpy() for m in decoded]

    def step(ms):
        return np.sqrt(np.mean(np.square(np.concatenate([np.diff(m, axis=0) for m in ms])), axis=0))

    assert np.all(step(decoded) < 0.8 * step(real))  # smoother than real before
    assert np.allclose(step(out), step(real), rtol=0.02)  # as lively as real after
    assert np.allclose(np.concatenate(out).mean(0), np.concatenate(real).mean(0), atol=0.05)
    # already as detailed as real: nothing to sharpen
    assert max(fit_calibration(real, [m * 1.0 for m in real]).sharpen) < 1e-6


def test_fitting_restores_band_to_band_detail():
    rng = np.random.default_rng(1)
    real = [rng.standard_normal((100, 16)) for _ in range(6)]
    decoded = [0.5 * m + 0.5 * band_mean(torch.from_numpy(m[None].astype(np.float32)))[0].numpy() for m in real]
    cal = fit_calibration(real, decoded)
    assert 0.2 < cal.sharpen_freq < 3.0, cal.sharpen_freq  # found, not clipped
    out = [MelCalibrationLayer(cal)(torch.from_numpy(m[None].astype(np.float32)))[0].numpy() for m in decoded]

    def step(ms):
        return np.sqrt(np.mean(np.square(np.concatenate([np.diff(m, axis=1) for m in ms]))))

    assert step(out) == pytest.approx(step(real), rel=0.02)
