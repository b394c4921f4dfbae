"""The torch log-mel (training) and the NumPy log-mel (engine) give the same numbers."""

import numpy as np
import pytest
import torch

from reaudio.engine.audio.frontend import AUDIOLDM_MEL, HIFIGAN_22K_MEL, log_mel
from reaudio.models.mel import LogMel
from tests.conftest import realistic_audio


@pytest.mark.parametrize("cfg", [AUDIOLDM_MEL, HIFIGAN_22K_MEL], ids=["audioldm", "hifigan-22k"])
def test_torch_and_numpy_log_mel_agree(cfg, rng):
    batch = np.stack([realistic_audio(cfg.sample_rate, 2.0, rng) for _ in range(3)])
    batch[2] *= 1e-3  # a quiet clip exercises the log near its floor
    expected = log_mel(batch, cfg)
    actual = LogMel(cfg)(torch.from_numpy(batch)).numpy()
    assert actual.shape == expected.shape == (3, cfg.num_frames(batch.shape[1]), cfg.n_mels)
    assert np.abs(actual - expected).max() <= 1e-4
    # Not trivially equal: the spectrogram has real dynamic range.
    assert expected.max() - expected.min() > 5


def test_single_clip_and_gradients(rng):
    cfg = AUDIOLDM_MEL
    audio = torch.from_numpy(realistic_audio(cfg.sample_rate, 0.5, rng)).requires_grad_(True)
    mel = LogMel(cfg)(audio)
    assert mel.shape == (cfg.num_frames(audio.shape[0]), cfg.n_mels) and mel.dtype == torch.float32
    mel.sum().backward()
    assert torch.isfinite(audio.grad).all() and audio.grad.abs().sum() > 0
