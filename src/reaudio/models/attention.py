"""Attention layers of the UNet: multi-head attention and the spatial transformer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import group_norm

#: Additive bias for masked keys; fp16-safe, and exp() of it underflows to 0 in fp32.
_MASK_BIAS = -1e4


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None."""

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        context_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Linear(query_dim, query_dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, N, C); context (B, L, D); mask (B, L) bool, True where a token is real."""
        context = x if context is None else context
        b, n, c = x.shape
        h = self.heads
        q = self.to_q(x).reshape(b, n, h, c // h).transpose(1, 2)  # (B, h, N, c/h)
        k = self.to_k(context).reshape(b, -1, h, c // h).transpose(1, 2)
        v = self.to_v(context).reshape(b, -1, h, c // h).transpose(1, 2)
        bias = None
        if mask is not None:
            bias = (~mask).to(q.dtype)[:, None, None, :] * _MASK_BIAS  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.to_out(out.transpose(1, 2).reshape(b, n, c))
        if mask is not None:
            # An item with no real tokens (a dropped condition) gets no contribution,
            # rather than the average of its padding.
            out = out * mask.any(dim=1).to(out.dtype)[:, None, None]
        return out


class GEGLUFeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * mult * 2)
        self.proj_out = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(h * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Self-attention, one cross-attention per named context, feed-forward; pre-LayerNorm."""

    def __init__(self, dim: int, heads: int, contexts: dict[str, int], extra_self_attention: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.cross_norms = nn.ModuleDict({name: nn.LayerNorm(dim) for name in contexts})
        self.cross_attns = nn.ModuleDict({name: Attention(dim, heads, d) for name, d in contexts.items()})
        # AudioLDM's layout: with no context, the second attention attends to the input itself.
        self.self_attn2 = None
        if extra_self_attention and not contexts:
            self.norm2 = nn.LayerNorm(dim)
            self.self_attn2 = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = GEGLUFeedForward(dim)

    def forward(self, x: torch.Tensor, contexts: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        for name, attn in self.cross_attns.items():
            if name in contexts:
                tokens, mask = contexts[name]
                x = x + attn(self.cross_norms[name](x), tokens, mask)
        if self.self_attn2 is not None:
            x = x + self.self_attn2(self.norm2(x))
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer blocks over the (T × F) positions of a feature map."""

    def __init__(
        self,
        channels: int,
        heads: int,
        depth: int,
        contexts: dict[str, int],
        extra_self_attention: bool,
        norm_groups: int = 32,
    ) -> None:
        super().__init__()
        self.norm = group_norm(channels, norm_groups)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, heads, contexts, extra_self_attention) for _ in range(depth)
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, contexts: dict[str, tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        b, c, t, f = x.shape
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)  # (B, T·F, C)
        for block in self.blocks:
            h = block(h, contexts)
        return x + self.proj_out(h.transpose(1, 2).reshape(b, c, t, f))
