"""CLAP dual encoder: frozen pretrained text tower, compact log-mel audio tower, InfoNCE."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .attention import Attention
from .layers import group_norm, pool_tokens
from .text_tower import TextTowerConfig, build_text_tower, token_features


@dataclass(frozen=True)
class AudioTowerConfig:
    """Log-mel → token sequence encoder.

    Attributes:
        n_mels: input mel bands.
        stem_channels: widths of the stride-2 conv stem; each halves time and frequency.
        width: token width of the transformer.
        layers, heads: transformer depth and heads.
        norm_groups: GroupNorm groups in the stem.
    """

    n_mels: int = 64
    stem_channels: tuple[int, ...] = (32, 64, 128)
    width: int = 256
    layers: int = 4
    heads: int = 4
    norm_groups: int = 8


@dataclass(frozen=True)
class CLAPConfig:
    """Both towers and the shared embedding space.

    Attributes:
        text: the text tower.
        audio: the audio tower.
        embed_dim: width of the joint (unit-norm) embedding space.
        init_temperature: initial softmax temperature of the contrastive loss.
    """

    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    audio: AudioTowerConfig = field(default_factory=AudioTowerConfig)
    embed_dim: int = 512
    init_temperature: float = 0.07


class _EncoderLayer(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * freqs)
    pe[:, 1::2] = torch.cos(pos * freqs[: dim // 2])
    return pe


class AudioTower(nn.Module):
    """Log-mel (B, T, n_mels) → tokens (B, ceil(T / r), width), r = 2 ** len(stem_channels)."""

    def __init__(self, cfg: AudioTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        ch, freq = 1, cfg.n_mels
        for out in cfg.stem_channels:
            layers += [
                nn.Conv2d(ch, out, 3, stride=2, padding=1),
                group_norm(out, cfg.norm_groups, eps=1e-5),
                nn.GELU(),
            ]
            ch, freq = out, (freq + 1) // 2
        self.stem = nn.Sequential(*layers)
        self.to_tokens = nn.Linear(ch * freq, cfg.width)
        self.layers = nn.ModuleList(_EncoderLayer(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        h = self.stem(mel.unsqueeze(1))  # (B, C, T', F')
        h = self.to_tokens(h.permute(0, 2, 1, 3).flatten(2))  # (B, T', width)
        h = h + sinusoidal_positions(h.shape[1], h.shape[2], h.device).to(h.dtype)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)


def _projection(in_dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class CLAP(nn.Module):
    """Text and audio towers with projections into one unit-norm embedding space."""

    def __init__(self, cfg: CLAPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.text_encoder, self.tokenizer = build_text_tower(cfg.text)
        if cfg.text.freeze:
            self.text_encoder.requires_grad_(False)
        self.audio_encoder = AudioTower(cfg.audio)
        self.text_proj = _projection(cfg.text.hidden_size, cfg.embed_dim)
        self.audio_proj = _projection(cfg.audio.width, cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    def train(self, mode: bool = True) -> CLAP:
        super().train(mode)
        if self.cfg.text.freeze:
            self.text_encoder.eval()  # no dropout in a frozen tower
        return self

    def text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Caption token features (B, L, hidden) — the retrieved-caption context."""
        return token_features(self.text_encoder, ids, mask)

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-norm text embeddings (B, embed_dim) from mask-weighted mean token features, the tokens)."""
        tokens = self.text_tokens(ids, mask)
        weights = mask.to(tokens.dtype).unsqueeze(-1)
        pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return F.normalize(self.text_proj(pooled), dim=-1), tokens

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings (B, embed_dim)."""
        return self.encode_text(ids, mask)[0]

    def tokenizer_json(self) -> str:
        return self.tokenizer.to_str()

    def audio_input(self, audio, mel) -> torch.Tensor:
        """One mono clip at the front end's rate → the audio tower's input, its log-mel (1, T, n_mels)."""
        return mel(torch.as_tensor(audio)).unsqueeze(0)

    def audio_tokens(self, mel: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Audio token features pooled over time to ``num_tokens`` (B, M, width)."""
        return pool_tokens(self.audio_encoder(mel), num_tokens)

    def embed_audio(self, mel: torch.Tensor) -> torch.Tensor:
        """Unit-norm audio embeddings (B, embed_dim)."""
        return F.normalize(self.audio_proj(self.audio_encoder(mel).mean(1)), dim=-1)

    def encode_audio(self, mel: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-norm audio embeddings, ``num_tokens`` pooled audio tokens) in one pass of the tower."""
        tokens = self.audio_encoder(mel)
        return F.normalize(self.audio_proj(tokens.mean(1)), dim=-1), pool_tokens(tokens, num_tokens)

    def contrastive_loss(self, text_emb: torch.Tensor, audio_emb: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE over the batch; pair i of each side matches."""
        scale = self.logit_scale.clamp(max=math.log(100.0)).exp()
        logits = scale * text_emb @ audio_emb.T
        target = torch.arange(len(logits), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
