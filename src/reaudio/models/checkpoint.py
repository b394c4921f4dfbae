"""Checkpoints: a folder with ``config.json`` (model type + config) and ``model.safetensors``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from reaudio.engine.bundle.dataclass_io import atomic_path, from_dict, to_dict, write_json_atomic

from .band_extension import BandExtension, BandExtensionConfig
from .clap import CLAP, CLAPConfig
from .hifigan import HiFiGANConfig, HiFiGANGenerator
from .key_maps import CheckpointError, load_state_strict  # noqa: F401  (CheckpointError: re-exported)
from .laion_clap import LaionCLAP, LaionCLAPConfig
from .unet import UNet, UNetConfig
from .vae import AutoencoderKL, VAEConfig

#: Model type name → (module class, config class).
MODEL_TYPES: dict[str, tuple[type[nn.Module], type]] = {
    "vae": (AutoencoderKL, VAEConfig),
    "vocoder": (HiFiGANGenerator, HiFiGANConfig),
    "unet": (UNet, UNetConfig),
    "clap": (CLAP, CLAPConfig),
    "laion-clap": (LaionCLAP, LaionCLAPConfig),
    "band-extension": (BandExtension, BandExtensionConfig),
}

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def model_type_of(model: nn.Module) -> str:
    for name, (cls, _) in MODEL_TYPES.items():
        if type(model) is cls:
            return name
    raise TypeError(f"no checkpoint type for {type(model).__name__}; known: {sorted(MODEL_TYPES)}")


def save_checkpoint(folder: str | Path, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (its ``cfg`` and weights) to ``folder``; each file is replaced atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"type": model_type_of(model)})
    meta = {"type": model_type_of(model), "config": to_dict(model.cfg), **(extra or {})}
    write_json_atomic(folder / CONFIG, meta)
    return folder


def read_checkpoint_config(folder: str | Path) -> tuple[str, Any, dict[str, Any]]:
    """(model type, config dataclass, the whole config.json) of a checkpoint folder."""
    path = Path(folder) / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a checkpoint ({CONFIG} missing)")
    meta = json.loads(path.read_text(encoding="utf-8"))
    kind = meta.get("type")
    if kind not in MODEL_TYPES:
        raise CheckpointError(f"{path}: unknown model type {kind!r}; known: {sorted(MODEL_TYPES)}")
    return kind, from_dict(MODEL_TYPES[kind][1], meta.get("config", {}), where=f"{path}:config"), meta


def load_checkpoint(folder: str | Path, map_location: str = "cpu") -> nn.Module:
    """Rebuild the model from ``config.json`` and load ``model.safetensors`` into it."""
    folder = Path(folder)
    kind, cfg, _ = read_checkpoint_config(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{folder}: {WEIGHTS} missing")
    model = MODEL_TYPES[kind][0](cfg)
    load_state_strict(model, load_file(str(weights), device=map_location), str(weights))
    return model
