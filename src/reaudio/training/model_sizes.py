"""Human-readable summaries of model configs (parameter counts without allocating weights)."""

from __future__ import annotations

import json

import torch

from reaudio.models.configs import NAMED_CONFIGS, FamilyConfig, load_config
from reaudio.models.hifigan import HiFiGANGenerator
from reaudio.models.unet import UNet
from reaudio.models.vae import AutoencoderKL


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def component_sizes(cfg: FamilyConfig) -> dict[str, int]:
    """Parameter counts of the generative components, built on the meta device (no memory)."""
    with torch.device("meta"):
        return {
            "unet": count_parameters(UNet(cfg.unet)),
            "vae": count_parameters(AutoencoderKL(cfg.vae)),
            "vocoder": count_parameters(HiFiGANGenerator(cfg.vocoder)),
        }


def describe_configs(names: list[str] | None = None, json_output: bool = False) -> str:
    configs = [load_config(n) for n in (names or list(NAMED_CONFIGS))]
    if json_output:
        return json.dumps({c.name: c.to_dict() for c in configs}, indent=2)
    header = f"{'config':<12} {'clip s':>6} {'latent (C,T,F)':>15} {'UNet':>9} {'VAE':>8} {'vocoder':>8}  retrieval"
    lines = [header, "-" * len(header)]
    for c in configs:
        sizes = component_sizes(c)
        latent = "×".join(str(v) for v in c.latent_shape())
        retrieval = f"k={c.retrieval.k} " + ("+".join(c.retrieval.contexts) or "none")
        lines.append(
            f"{c.name:<12} {c.clip_seconds:>6.2f} {latent:>15} {sizes['unet'] / 1e6:>8.2f}M "
            f"{sizes['vae'] / 1e6:>7.2f}M {sizes['vocoder'] / 1e6:>7.2f}M  {retrieval}"
        )
    return "\n".join(lines)
