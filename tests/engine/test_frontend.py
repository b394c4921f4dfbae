import numpy as np
import pytest

from reaudio.engine.audio.frontend import (
    AUDIOLDM_MEL,
    HIFIGAN_22K_MEL,
    MelConfig,
    log_mel,
    mel_filterbank,
)


@pytest.mark.parametrize("cfg", [AUDIOLDM_MEL, HIFIGAN_22K_MEL], ids=["audioldm", "hifigan-22k"])
def test_filterbank_is_area_normalised_triangles(cfg):
    fb = mel_filterbank(cfg)
    assert fb.shape == (cfg.n_mels, cfg.n_fft // 2 + 1)
    assert (fb >= 0).all()
    # Slaney normalisation: each triangle integrates to 1 over Hz. Narrow low bands are
    # undersampled by the FFT grid, so check the wider upper half.
    bin_hz = cfg.sample_rate / cfg.n_fft
    areas = fb.sum(axis=1) * bin_hz
    np.testing.assert_allclose(areas[cfg.n_mels // 2 :], 1.0, rtol=0.05)
    peaks = fb.argmax(axis=1)
    assert (np.diff(peaks) >= 0).all()


def test_sine_lands_in_the_band_centred_on_its_frequency():
    cfg = AUDIOLDM_MEL
    t = np.arange(cfg.sample_rate) / cfg.sample_rate
    fb = mel_filterbank(cfg)
    centres = fb.argmax(axis=1) * cfg.sample_rate / cfg.n_fft
    for freq in (300.0, 1500.0, 5000.0):
        mel = log_mel(np.sin(2 * np.pi * freq * t), cfg)
        band = mel[mel.shape[0] // 2].argmax()
        assert abs(centres[band] - freq) <= 0.1 * freq + 40


def test_frame_count_and_shapes():
    cfg = AUDIOLDM_MEL
    audio = np.zeros((3, 16000), np.float32)
    mel = log_mel(audio, cfg)
    assert mel.shape == (3, 100, 64) == (3, cfg.num_frames(16000), cfg.n_mels)
    assert mel.dtype == np.float32
    np.testing.assert_allclose(mel, np.log(1e-5), rtol=1e-6)  # silence → the log floor
    centred = cfg.replace(padding="center")
    assert log_mel(audio[0], centred).shape == (101, 64) == (centred.num_frames(16000), 64)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"win_length": 2048}, "win_length"),
        ({"fmax": 9000.0}, "fmin/fmax"),
        ({"padding": "zeros"}, "valid: reflect_half, center"),
        ({"log": "log2"}, "valid: ln, log10, none"),
        ({"power": 3.0}, "power"),
    ],
)
def test_invalid_configs_name_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        MelConfig(**changes)


def test_empty_and_too_short_audio_are_rejected():
    with pytest.raises(ValueError, match="no samples"):
        log_mel(np.zeros(0), AUDIOLDM_MEL)
    with pytest.raises(ValueError, match="too short"):
        log_mel(np.zeros(100), AUDIOLDM_MEL)
