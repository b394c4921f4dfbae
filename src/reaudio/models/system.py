"""A whole system on disk: ``family.json`` plus one checkpoint folder per component."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, read_checkpoint_config, save_checkpoint
from .clap import CLAP, CLAPConfig
from .configs import FamilyConfig, load_config
from .hifigan import HiFiGANGenerator
from .laion_clap import LaionCLAP
from .unet import UNet
from .vae import AutoencoderKL

COMPONENTS = ("vae", "vocoder", "unet", "clap")
FAMILY = "family.json"


def build_system(cfg: FamilyConfig) -> dict[str, nn.Module]:
    """Randomly initialised components of ``cfg`` (the CLAP text tower is pretrained if configured)."""
    return {
        "vae": AutoencoderKL(cfg.vae),
        "vocoder": HiFiGANGenerator(cfg.vocoder),
        "unet": UNet(cfg.unet),
        "clap": CLAP(cfg.clap) if isinstance(cfg.clap, CLAPConfig) else LaionCLAP(cfg.clap),
    }


def save_system(folder: str | Path, cfg: FamilyConfig, models: dict[str, nn.Module]) -> Path:
    folder = Path(folder)
    for name in COMPONENTS:
        save_checkpoint(folder / name, models[name])
    cfg.save(folder / FAMILY)
    return folder


def load_system(paths: list[str | Path], config: str | None = None) -> tuple[FamilyConfig, dict[str, nn.Module]]:
    """Components from system folders and/or single checkpoint folders.

    A system folder holds ``family.json`` and component subfolders; a checkpoint folder
    holds one component. Later paths override earlier ones. The family config comes
    from ``config`` (a name or JSON path) or the first ``family.json`` found.
    """
    found: dict[str, Path] = {}
    family: FamilyConfig | None = load_config(config) if config else None
    for raw in paths:
        path = Path(raw)
        if (path / FAMILY).is_file():
            family = family or load_config(path / FAMILY)
            for name in COMPONENTS:
                if (path / name / "config.json").is_file():
                    found[name] = path / name
        elif (path / "config.json").is_file():
            kind, _, _ = read_checkpoint_config(path)
            found[kind] = path
        else:
            raise CheckpointError(f"{path}: neither a system folder ({FAMILY}) nor a checkpoint (config.json)")
    missing = [n for n in COMPONENTS if n not in found]
    if missing:
        raise CheckpointError(f"components missing from {[str(p) for p in paths]}: {missing}")
    if family is None:
        raise CheckpointError(f"no {FAMILY} among {[str(p) for p in paths]}; pass --config NAME|PATH")
    models = {name: load_checkpoint(found[name]) for name in COMPONENTS}
    for name, model in models.items():
        expected = getattr(family, name)
        if model.cfg != expected:
            raise CheckpointError(f"{found[name]}: its config differs from the family config's {name!r} section")
    return family, models
