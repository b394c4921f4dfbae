"""Small building blocks shared by the VAE and the UNet."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, groups: int, eps: float = 1e-6) -> nn.GroupNorm:
    """GroupNorm of ``groups`` groups; ``channels`` must divide evenly.

    Too many groups for the width (one channel each) would turn it into instance
    norm, which removes the per-channel timestep/FiLM shift of a res block: small
    configs set fewer groups.
    """
    if channels % groups:
        raise ValueError(f"{channels} channels do not split into {groups} norm groups; choose another norm_groups")
    return nn.GroupNorm(groups, channels, eps=eps, affine=True)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (B,) → (B, dim), cos half first (LDM/AudioLDM order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Downsample(nn.Module):
    """Stride-2 3×3 convolution; odd sizes round up (ceil(n / 2))."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to an explicit size (or ×2), then a 3×3 convolution."""

    def __init__(self, channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)


def pool_tokens(tokens: torch.Tensor, num: int) -> torch.Tensor:
    """Average (B, T, D) tokens into ``num`` time bins (B, num, D), as adaptive average pooling.

    Written as a masked matrix product so that it exports to ONNX for any T
    (ONNX has no adaptive pooling for sizes that do not divide).
    """
    length = tokens.shape[1]
    idx = torch.arange(num, device=tokens.device)
    start = torch.div(idx * length, num, rounding_mode="floor")
    end = torch.div((idx + 1) * length + num - 1, num, rounding_mode="floor")
    pos = torch.arange(length, device=tokens.device)
    weights = ((pos[None, :] >= start[:, None]) & (pos[None, :] < end[:, None])).to(tokens.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True)  # (num, T)
    return torch.matmul(weights, tokens)
