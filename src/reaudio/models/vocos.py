"""A frame-rate vocoder with an inverse-STFT head (Vocos, Siuzdak 2023), for full-band output.

The network runs at the mel's frame rate (ConvNeXt blocks) and predicts, per frame, the magnitude
and phase of one STFT frame of the output; an inverse STFT turns them into audio. Its output rate
is free of the mel's: from the 22.05-kHz, hop-256 log-mel (fmax 8 kHz) it can write 44.1 kHz with
hop 512, the band above 8 kHz learned from full-band clips (bandwidth extension).

The inverse STFT is written with matrix products and an overlap-add of shifted frames, not
``torch.istft``, so the whole generator exports to ONNX (opset 18 has no inverse STFT); it equals
``torch.istft(..., center=True)`` with a periodic Hann window (tested).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VocosConfig:
    """Generator sizes.

    Attributes:
        n_mels: input mel bands.
        dim, intermediate, layers: ConvNeXt width, its inner width, and how many blocks.
        n_fft, hop_length: the output STFT: frame length and output samples per mel frame
            (a multiple of 4 dividing ``n_fft``: frames overlap ``n_fft // hop_length`` times).
        sample_rate: the output rate (Hz).
    """

    n_mels: int = 80
    dim: int = 384
    intermediate: int = 1152
    layers: int = 8
    n_fft: int = 2048
    hop_length: int = 512
    sample_rate: int = 44100

    def __post_init__(self) -> None:
        if self.n_fft % self.hop_length or self.n_fft // self.hop_length < 2:
            raise ValueError(
                f"n_fft={self.n_fft} must be a multiple (at least 2x) of hop_length={self.hop_length}: "
                "the overlap-add sums whole shifted frames"
            )


class ConvNeXtBlock(nn.Module):
    """Depthwise convolution, LayerNorm, an inverted bottleneck and a scaled residual (ConvNeXt)."""

    def __init__(self, dim: int, intermediate: int, layer_scale: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, intermediate)
        self.pwconv2 = nn.Linear(intermediate, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = self.dwconv(x).transpose(1, 2)  # (B, T, C)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).transpose(1, 2)


class InverseSTFT(nn.Module):
    """``torch.istft(center=True)`` with a periodic Hann window, from real and imaginary parts,
    in ONNX-exportable operations: one matrix product per frame and an overlap-add of shifts."""

    def __init__(self, n_fft: int, hop_length: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop_length
        bins = n_fft // 2 + 1
        n = torch.arange(n_fft, dtype=torch.float64)
        k = torch.arange(bins, dtype=torch.float64)[:, None]
        # irfft: x[n] = (1/N) Σ_k w_k (Re X_k cos(2πkn/N) − Im X_k sin(2πkn/N)), w = 1 at DC and Nyquist, else 2.
        weight = torch.full((bins, 1), 2.0, dtype=torch.float64)
        weight[0] = weight[-1] = 1.0
        window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
        angle = 2 * math.pi * k * n / n_fft
        self.register_buffer("cos_basis", (weight * torch.cos(angle) * window / n_fft).float(), persistent=False)
        self.register_buffer("sin_basis", (-weight * torch.sin(angle) * window / n_fft).float(), persistent=False)
        self.register_buffer("window_sq", (window**2).float(), persistent=False)

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, n_fft) frames → (B, (T - 1) · hop + n_fft) samples, each frame added at t · hop."""
        batch, count, _ = frames.shape
        parts = self.n_fft // self.hop
        pieces = frames.reshape(batch, count, parts, self.hop)  # (B, T, parts, hop)
        total = count + parts - 1
        out = torch.zeros(batch, total, self.hop, dtype=frames.dtype, device=frames.device)
        for j in range(parts):
            out = out + F.pad(pieces[:, :, j], (0, 0, j, parts - 1 - j))
        return out.reshape(batch, total * self.hop)

    def forward(self, real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:  # (B, T, bins) each
        frames = real @ self.cos_basis + imag @ self.sin_basis  # (B, T, n_fft), windowed
        audio = self._overlap_add(frames)
        envelope = self._overlap_add(self.window_sq.expand(1, frames.shape[1], self.n_fft))
        half = self.n_fft // 2
        # center=True: the first frame is centred on sample 0, so half a frame is cut at each end.
        audio, envelope = audio[:, half:-half], envelope[:, half:-half]
        return audio / envelope.clamp_min(1e-11)


class VocosGenerator(nn.Module):
    """Log-mel (B, n_mels, T) → audio (B, (T - 1) · hop_length) at ``cfg.sample_rate`` (as ``torch.istft``
    with ``center=True``: each frame centred on its sample)."""

    def __init__(self, cfg: VocosConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, kernel_size=7, padding=3)
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.blocks = nn.ModuleList(
            ConvNeXtBlock(cfg.dim, cfg.intermediate, 1.0 / cfg.layers) for _ in range(cfg.layers)
        )
        self.final_norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        self.head = nn.Linear(cfg.dim, cfg.n_fft + 2)
        self.istft = InverseSTFT(cfg.n_fft, cfg.hop_length)

    def spectrum(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Real and imaginary parts (B, T, n_fft // 2 + 1) of the output's STFT."""
        x = self.norm(self.embed(mel).transpose(1, 2)).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        out = self.head(self.final_norm(x.transpose(1, 2)))  # (B, T, n_fft + 2)
        log_mag, phase = out.chunk(2, dim=-1)
        mag = torch.exp(log_mag).clamp_max(1e2)  # as Vocos: a bounded magnitude keeps early training stable
        return mag * torch.cos(phase), mag * torch.sin(phase)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.istft(*self.spectrum(mel))
