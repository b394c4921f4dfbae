"""AudioLDM's UNet with a FiLM condition and one cross-attention per retrieval context."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SpatialTransformer
from .layers import Downsample, Upsample, group_norm, timestep_embedding

Contexts = dict[str, tuple[torch.Tensor, "torch.Tensor | None"]]


@dataclass(frozen=True)
class ContextConfig:
    """A cross-attention context: its name and token feature width."""

    name: str
    dim: int


@dataclass(frozen=True)
class UNetConfig:
    """Denoiser sizes.

    Attributes:
        in_channels, out_channels: latent channels.
        model_channels: base width; level i has model_channels · channel_mult[i].
        channel_mult: width multiplier per level; len - 1 downsamplings.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: downsampling factors (1, 2, 4, …) with a spatial transformer.
        num_head_channels: channels per attention head.
        transformer_depth: transformer blocks per spatial transformer.
        film_dim: width of the FiLM condition (the prompt's CLAP embedding); 0 for none.
        contexts: named cross-attention contexts (retrieved caption / audio tokens).
        extra_self_attention: with no contexts, add AudioLDM's second self-attention.
        norm_groups: GroupNorm groups (every level's width must divide by it).
        num_heads: attention heads per level (the middle block uses the last); empty:
            width // num_head_channels everywhere. Imported diffusers UNets need it.
    """

    in_channels: int = 8
    out_channels: int = 8
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 5)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (2, 4, 8)
    num_head_channels: int = 32
    transformer_depth: int = 1
    film_dim: int = 512
    contexts: tuple[ContextConfig, ...] = field(default_factory=tuple)
    extra_self_attention: bool = True
    norm_groups: int = 32
    num_heads: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_heads and len(self.num_heads) != len(self.channel_mult):
            raise ValueError(f"UNetConfig.num_heads needs one entry per level ({len(self.channel_mult)})")
        for level, mult in enumerate(self.channel_mult):
            if self.num_heads:
                if (self.model_channels * mult) % self.num_heads[level]:
                    raise ValueError(
                        f"UNetConfig: width {self.model_channels * mult} not divisible into "
                        f"{self.num_heads[level]} heads"
                    )
            elif (self.model_channels * mult) % self.num_head_channels:
                raise ValueError(
                    f"UNetConfig: width {self.model_channels * mult} is not a multiple of "
                    f"num_head_channels={self.num_head_channels}"
                )
        names = [c.name for c in self.contexts]
        if len(set(names)) != len(names):
            raise ValueError(f"UNetConfig.contexts: duplicate names in {names}")

    def input_differences(self, other: UNetConfig) -> list[str]:
        """How ``other``'s inputs differ from this UNet's, each as "what: ours vs theirs" (empty: same inputs).

        Widths inside may differ between two UNets that take the same inputs; those do not count.
        """
        found = []
        if (self.in_channels, self.out_channels) != (other.in_channels, other.out_channels):
            found.append(f"latent channels {self.in_channels} vs {other.in_channels}")
        if self.film_dim != other.film_dim:
            found.append(f"FiLM width {self.film_dim} vs {other.film_dim}")
        if {c.name: c.dim for c in self.contexts} != {c.name: c.dim for c in other.contexts}:
            found.append(f"contexts {self.contexts} vs {other.contexts}")
        return found


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups, eps=1e-5)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = group_norm(out_ch, groups, eps=1e-5)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Stage(nn.Module):
    """A res block, optionally followed by a spatial transformer."""

    def __init__(self, res: ResBlock, attn: SpatialTransformer | None) -> None:
        super().__init__()
        self.res = res
        self.attn = attn

    def forward(self, x: torch.Tensor, emb: torch.Tensor, contexts: Contexts) -> torch.Tensor:
        x = self.res(x, emb)
        return self.attn(x, contexts) if self.attn is not None else x


class UNet(nn.Module):
    """ε(z_t, t, film, contexts): latent (B, C, T, F) → predicted noise of the same shape.

    Any latent size works: downsampling rounds up and each upsampling returns to
    the exact size of its skip connection.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc = cfg.model_channels
        time_dim = 4 * mc
        self.time_embed = nn.Sequential(nn.Linear(mc, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
        self.film_embed = nn.Linear(cfg.film_dim, time_dim) if cfg.film_dim else None
        emb_dim = time_dim * (2 if cfg.film_dim else 1)
        contexts = {c.name: c.dim for c in cfg.contexts}

        def heads(level: int, width: int) -> int:
            return cfg.num_heads[level] if cfg.num_heads else width // cfg.num_head_channels

        def stage(in_ch: int, out_ch: int, ds: int, level: int) -> Stage:
            attn = None
            if ds in cfg.attention_resolutions:
                attn = SpatialTransformer(
                    out_ch,
                    heads(level, out_ch),
                    cfg.transformer_depth,
                    contexts,
                    cfg.extra_self_attention,
                    cfg.norm_groups,
                )
            return Stage(ResBlock(in_ch, out_ch, emb_dim, cfg.norm_groups), attn)

        self.conv_in = nn.Conv2d(cfg.in_channels, mc, 3, padding=1)
        self.down_stages = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down_stages.append(stage(ch, mc * mult, ds, level))
                ch = mc * mult
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.downsamplers.append(Downsample(ch))
                skip_channels.append(ch)
                ds *= 2

        g = cfg.norm_groups
        self.mid_res1 = ResBlock(ch, ch, emb_dim, g)
        self.mid_attn = SpatialTransformer(
            ch, heads(len(cfg.channel_mult) - 1, ch), cfg.transformer_depth, contexts, cfg.extra_self_attention, g
        )
        self.mid_res2 = ResBlock(ch, ch, emb_dim, g)

        self.up_stages = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up_stages.append(stage(ch + skip_channels.pop(), mc * mult, ds, level))
                ch = mc * mult
            if level:
                self.upsamplers.append(Upsample(ch))
                ds //= 2

        self.norm_out = group_norm(ch, g, eps=1e-5)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        film: torch.Tensor | None = None,
        contexts: Contexts | None = None,
    ) -> torch.Tensor:
        cfg = self.cfg
        contexts = contexts or {}
        unknown = set(contexts) - {c.name for c in cfg.contexts}
        if unknown:
            raise ValueError(
                f"UNet: unknown context(s) {sorted(unknown)}; configured: {[c.name for c in cfg.contexts]}"
            )
        if timesteps.dim() == 0:
            timesteps = timesteps.expand(x.shape[0])
        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(x.dtype))
        if self.film_embed is not None:
            if film is None:
                film = x.new_zeros(x.shape[0], cfg.film_dim)
            emb = torch.cat([emb, self.film_embed(film)], dim=-1)

        h = self.conv_in(x)
        skips = [h]
        stages = iter(self.down_stages)
        for level in range(len(cfg.channel_mult)):
            for _ in range(cfg.num_res_blocks):
                h = next(stages)(h, emb, contexts)
                skips.append(h)
            if level != len(cfg.channel_mult) - 1:
                h = self.downsamplers[level](h)
                skips.append(h)

        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb), contexts), emb)

        stages = iter(self.up_stages)
        for i in range(len(cfg.channel_mult)):
            for _ in range(cfg.num_res_blocks + 1):
                h = next(stages)(torch.cat([h, skips.pop()], dim=1), emb, contexts)
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h, size=tuple(skips[-1].shape[-2:]))
        return self.conv_out(F.silu(self.norm_out(h)))
