"""Band extension: the vocoder's 22.05-kHz audio → 44.1 kHz with a band above 8 kHz learned from
full-band clips.

The log-mel stops at 8 kHz, so nothing a vocoder writes above it carries information from the
model. Like spectral band replication in audio codecs (HE-AAC's SBR), this stage rebuilds the top
band from the band under it and a coarse spectral envelope: the STFT bins of 4-8 kHz are copied up,
period after period, to the top of the spectrum, and each 1-kHz band of the copy is scaled to the
level a small convolutional network predicts from the log-mel (trained on full-band clips).

Everything is written in operations ONNX exports (convolutions for the analysis and synthesis
transforms, a gather for the copy), so the stage is part of the bundle's decoder graph and the
engine only sees a higher output rate:

    out = upsample₂(x) + iSTFT(D),   D = shaped copy − the vocoder's own band, above the crossover

Frames: the output STFT has ``n_fft`` 1024 and hop 256 at 44.1 kHz, two frames per mel frame (the
mel's hop is 256 at 22.05 kHz), padded as the log-mel is padded so frame centres line up with the
mel's. Copy shifts are multiples of ``n_fft / hop`` bins, so a copied bin's phase advances by whole
turns from frame to frame and the overlap-add stays coherent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class BandExtensionConfig:
    """Sizes and bands.

    Attributes:
        in_rate, n_mels, mel_hop: the vocoder's rate and the log-mel it was given (frames of ``mel_hop``).
        factor: output rate / ``in_rate`` (2: 22.05 → 44.1 kHz).
        n_fft, hop: the output-rate STFT of the copy (``hop`` × ``mel_hop_ratio`` = mel hop × factor).
        source_hz: the top of the band that is copied up (the log-mel's fmax), ``shift_bins`` wide.
        crossover_hz: the output keeps the vocoder's audio below this and the shaped copy above.
        band_hz: width of the envelope's bands, from ``source_hz`` to the output's Nyquist frequency.
        channels, kernel, layers: the envelope network (1-D convolutions over mel frames).
        resampler_half_taps: half-length of the ×2 interpolation filter (Kaiser-windowed sinc).
    """

    in_rate: int = 22050
    n_mels: int = 80
    mel_hop: int = 256
    factor: int = 2
    n_fft: int = 1024
    hop: int = 256
    source_hz: float = 8000.0
    shift_bins: int = 92
    crossover_hz: float = 8000.0
    band_hz: float = 1000.0
    channels: int = 128
    kernel: int = 5
    layers: int = 3
    resampler_half_taps: int = 48

    def __post_init__(self) -> None:
        overlap = self.n_fft // self.hop
        if self.n_fft % self.hop or overlap < 2:
            raise ValueError(f"n_fft={self.n_fft} must be a multiple (at least 2x) of hop={self.hop}")
        if (self.mel_hop * self.factor) % self.hop:
            raise ValueError(
                f"hop={self.hop} must divide the mel hop at the output rate ({self.mel_hop * self.factor})"
            )
        if self.shift_bins % overlap:
            raise ValueError(
                f"shift_bins={self.shift_bins} must be a multiple of n_fft/hop={overlap} (phase coherence)"
            )
        if not self.shift_bins < self.bin_of(self.source_hz) <= self.bin_of(self.crossover_hz) < self.n_bins:
            raise ValueError(
                f"need shift_bins ({self.shift_bins}) < the bin of source_hz ({self.source_hz}) <= the bin of "
                f"crossover_hz ({self.crossover_hz}) < the Nyquist bin"
            )

    @property
    def out_rate(self) -> int:
        return self.in_rate * self.factor

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def frames_per_mel_frame(self) -> int:
        return self.mel_hop * self.factor // self.hop

    def bin_of(self, hz: float) -> int:
        return int(round(hz * self.n_fft / self.out_rate))

    def band_edges(self) -> list[tuple[float, float]]:
        """The envelope's bands in Hz, ``band_hz`` wide from ``source_hz`` up (the last up to Nyquist)."""
        nyquist = self.out_rate / 2
        count = max(1, int(math.floor((nyquist - self.source_hz) / self.band_hz + 1e-9)))
        edges = [self.source_hz + i * self.band_hz for i in range(count)] + [nyquist]
        return list(zip(edges[:-1], edges[1:]))

    @property
    def n_bands(self) -> int:
        return len(self.band_edges())

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: dict) -> BandExtensionConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"band extension config: unknown keys {sorted(unknown)}")
        return cls(**data)


#: The log level of an empty band: the log-mel's own floor.
LEVEL_FLOOR = 1e-5
#: The added band never takes a sample past this (the vocoder's output stays under full scale; a
#: band on top of a peak would clip it): where it would, that sample's share of the band is scaled down.
PEAK_LIMIT = 0.98


def interpolation_filter(half_taps: int, factor: int = 2) -> np.ndarray:
    """A Kaiser-windowed sinc that interpolates by ``factor``; it passes the input samples unchanged
    (zero at every other multiple of ``factor``) and cuts at the input's Nyquist frequency."""
    k = np.arange(-half_taps, half_taps + 1)
    return (np.sinc(k / factor) * np.kaiser(len(k), 8.0)).astype(np.float32)


def periodic_hann(n: int) -> np.ndarray:
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float64)


class BandLevels(nn.Module):
    """Audio at the output rate → log mean magnitude of each envelope band, per mel frame
    (B, frames, bands): the envelope network's training target, and the copy's own level."""

    def __init__(self, cfg: BandExtensionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        freqs = np.arange(cfg.n_bins) * cfg.out_rate / cfg.n_fft
        member = np.stack([(freqs >= lo) & (freqs < hi) for lo, hi in cfg.band_edges()]).astype(np.float64)
        member[-1, -1] = 1.0  # the Nyquist bin belongs to the last band
        self.register_buffer(
            "band_mean", torch.from_numpy(member / member.sum(1, keepdims=True)).float(), persistent=False
        )
        window = periodic_hann(cfg.n_fft)
        n = np.arange(cfg.n_fft)
        k = np.arange(cfg.n_bins)[:, None]
        self.register_buffer(
            "cos", torch.from_numpy(np.cos(2 * np.pi * k * n / cfg.n_fft) * window).float(), persistent=False
        )
        self.register_buffer(
            "sin", torch.from_numpy(np.sin(2 * np.pi * k * n / cfg.n_fft) * window).float(), persistent=False
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        pad = (cfg.n_fft - cfg.hop) // 2
        x = F.pad(wav[:, None], (pad, pad), mode="reflect")
        re = F.conv1d(x, self.cos[:, None], stride=cfg.hop)
        im = F.conv1d(x, self.sin[:, None], stride=cfg.hop)
        mag = torch.sqrt(re.square() + im.square() + 1e-20)  # (B, bins, frames)
        levels = torch.matmul(self.band_mean, mag)  # (B, bands, frames)
        r = cfg.frames_per_mel_frame
        frames = levels.shape[-1] // r * r
        levels = levels[..., :frames].reshape(levels.shape[0], levels.shape[1], -1, r).mean(-1)
        return torch.log(levels.clamp_min(LEVEL_FLOOR)).transpose(1, 2)


class EnvelopeNet(nn.Module):
    """Log-mel (B, frames, n_mels) → predicted log band levels (B, frames, bands)."""

    def __init__(self, cfg: BandExtensionConfig) -> None:
        super().__init__()
        pad = cfg.kernel // 2
        layers: list[nn.Module] = []
        width = cfg.n_mels
        for _ in range(cfg.layers):
            layers += [nn.Conv1d(width, cfg.channels, cfg.kernel, padding=pad), nn.GELU()]
            width = cfg.channels
        self.body = nn.Sequential(*layers)
        self.out = nn.Conv1d(width, cfg.n_bands, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(mel.transpose(1, 2))).transpose(1, 2)


class BandExtension(nn.Module):
    """(vocoder audio (B, frames · mel_hop) at ``in_rate``, its log-mel (B, frames, n_mels))
    → audio (B, frames · mel_hop · factor) at ``out_rate``."""

    def __init__(self, cfg: BandExtensionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.envelope = EnvelopeNet(cfg)
        self.register_buffer(
            "interp", torch.from_numpy(interpolation_filter(cfg.resampler_half_taps, cfg.factor)), persistent=False
        )

        source_top, cross = cfg.bin_of(cfg.source_hz), cfg.bin_of(cfg.crossover_hz)
        source_low = source_top - cfg.shift_bins
        targets = np.arange(cross, cfg.n_bins)
        # Copied up period after period: target bin k takes bin source_top - shift + (k - source_top) mod shift.
        copied = source_low + (targets - source_top) % cfg.shift_bins
        analysed = np.arange(source_low, cfg.n_bins)  # the copy's source and the vocoder's band above the crossover
        self.register_buffer("copy_index", torch.from_numpy(copied - source_low).long(), persistent=False)
        self.register_buffer("own_index", torch.from_numpy(targets - source_low).long(), persistent=False)

        window = periodic_hann(cfg.n_fft)
        n = np.arange(cfg.n_fft)
        k = analysed[:, None]
        analysis = (
            np.concatenate([np.cos(2 * np.pi * k * n / cfg.n_fft), -np.sin(2 * np.pi * k * n / cfg.n_fft)]) * window
        )
        self.register_buffer("analysis", torch.from_numpy(analysis[:, None]).float(), persistent=False)
        # Real inverse DFT of bins ``targets`` (each bin but DC and Nyquist counts twice), windowed for overlap-add.
        k = targets[:, None]
        weight = np.where((targets == 0) | (targets == cfg.n_fft // 2), 1.0, 2.0)[:, None] / cfg.n_fft
        synthesis = (
            np.concatenate(
                [weight * np.cos(2 * np.pi * k * n / cfg.n_fft), -weight * np.sin(2 * np.pi * k * n / cfg.n_fft)]
            )
            * window
        )
        self.register_buffer("synthesis", torch.from_numpy(synthesis[:, None]).float(), persistent=False)
        self.register_buffer("window_sq", torch.from_numpy(window**2).float()[None, None], persistent=False)

        # Per-bin log gain: the bands' log gains interpolated between band centres.
        freqs = targets * cfg.out_rate / cfg.n_fft
        centres = np.array([(lo + hi) / 2 for lo, hi in cfg.band_edges()])
        spread = np.zeros((cfg.n_bands, len(targets)))
        for j, f in enumerate(freqs):
            i = int(np.clip(np.searchsorted(centres, f) - 1, 0, len(centres) - 2)) if len(centres) > 1 else 0
            if len(centres) == 1:
                spread[0, j] = 1.0
                continue
            t = float(np.clip((f - centres[i]) / (centres[i + 1] - centres[i]), 0.0, 1.0))
            spread[i, j], spread[i + 1, j] = 1 - t, t
        self.register_buffer("spread", torch.from_numpy(spread).float(), persistent=False)
        bands = np.stack([(freqs >= lo) & (freqs < hi) for lo, hi in cfg.band_edges()]).astype(np.float64)
        bands[-1, freqs >= cfg.band_edges()[-1][0]] = 1.0
        self.register_buffer(
            "band_mean", torch.from_numpy(bands / np.maximum(bands.sum(1, keepdims=True), 1)).float(), persistent=False
        )
        self.register_buffer("has_bins", torch.from_numpy(bands.sum(1) > 0), persistent=False)

    def upsample(self, wav: torch.Tensor) -> torch.Tensor:
        half = self.cfg.resampler_half_taps
        factor = self.cfg.factor
        up = F.conv_transpose1d(
            wav[:, None], self.interp[None, None], stride=factor, padding=half, output_padding=factor - 1
        )
        return up[:, 0]

    def forward(self, wav: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        up = self.upsample(wav)
        pad = (cfg.n_fft - cfg.hop) // 2
        spec = F.conv1d(F.pad(up[:, None], (pad, pad), mode="reflect"), self.analysis, stride=cfg.hop)
        half = spec.shape[1] // 2
        re, im = spec[:, :half], spec[:, half:]  # (B, analysed bins, stft frames)
        copy_re, copy_im = re.index_select(1, self.copy_index), im.index_select(1, self.copy_index)
        copy_mag = torch.sqrt(copy_re.square() + copy_im.square() + 1e-20)

        # Envelope: the predicted band level over the copy's level, per mel frame, spread to bins and frames.
        r = cfg.frames_per_mel_frame
        want = self.envelope(mel).transpose(1, 2)  # (B, bands, mel frames)
        want = want.repeat_interleave(r, dim=2)[..., : copy_mag.shape[-1]]
        have = torch.log(torch.matmul(self.band_mean, copy_mag).clamp_min(LEVEL_FLOOR))
        log_gain = torch.where(self.has_bins[None, :, None], want - have, torch.zeros_like(want)).clamp(-20.0, 12.0)
        gain = torch.exp(torch.matmul(self.spread.t(), log_gain))  # (B, target bins, frames)

        own_re, own_im = re.index_select(1, self.own_index), im.index_select(1, self.own_index)
        delta = torch.cat([gain * copy_re - own_re, gain * copy_im - own_im], dim=1)
        frames = F.conv_transpose1d(delta, self.synthesis, stride=cfg.hop)[:, 0]
        ones = torch.ones_like(delta[:, :1, :])
        norm = F.conv_transpose1d(ones, self.window_sq, stride=cfg.hop)[:, 0]
        added = (frames / norm.clamp_min(1e-3))[:, pad : pad + up.shape[-1]]
        out = up + added
        # Scale the band down at the few samples where it would push a peak past PEAK_LIMIT.
        target = torch.sign(out) * PEAK_LIMIT
        share = ((target - up) / torch.where(added.abs() > 1e-9, added, torch.full_like(added, 1e-9))).clamp(0.0, 1.0)
        return up + added * torch.where(out.abs() > PEAK_LIMIT, share, torch.ones_like(share))
