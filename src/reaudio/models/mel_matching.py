"""Mel matching: the vocoder's audio brought back to the log-mel it was asked to render.

The universal HiFi-GAN was trained on speech. On sound effects its output drifts from the mel it was
given (hiss and metallic ringing where the mel asks for something else), and that drift is most of
what the vocoder costs: on 100 real test clips (real → log-mel → vocoder) FAD rises from the floor
98.5 to 110.3, and giving the vocoder's STFT the real clip's magnitudes would bring it to 101.0
(docs/default_model.md, "Mel matching"). The mel is known at inference, so this stage imposes it:
each frame's STFT is scaled, band by band, by (asked mel / the output's mel), the audio is
resynthesised, and the two steps repeat. Overlap-add spreads each frame's gains into its
neighbours, so one pass leaves part of the error; repeating converges the way Griffin-Lim's
consistency steps do, and raising the gain to ``relaxation`` > 1 (over-relaxation) gets there in
fewer passes. Phases are the vocoder's throughout; bins above the mel's top band take its gain.

Imposing the mel's energy with the vocoder's phases can stack peaks (on the default model a clip's
peak rises by a median 13 %, in a few clips ×3), so the result passes a look-ahead limiter: a gain
under 1 only around samples past ``PEAK_LIMIT``, eased in and out over a few 256-sample blocks.

No weights: the stage is the mel configuration plus ``MelMatchingConfig``. Written in operations ONNX
exports (convolutions for the transforms, matmuls for the filterbank), so it is part of the decoder
graph, between the vocoder and the band extension.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reaudio.engine.audio.frontend import MelConfig, analysis_window, mel_filterbank

from .band_extension import PEAK_LIMIT  # one ceiling for the decoder's last stages
from .mel_matching_config import MelMatchingConfig

__all__ = ["PEAK_LIMIT", "MelMatching", "MelMatchingConfig", "bin_spreading", "limit_peaks"]

#: The transforms work on spectra scaled by this (the synthesis undoes it), so a full-scale signal's
#: squared magnitudes stay far inside fp16's range (a GPU bundle's fp16 decoder graph runs the stage).
SPECTRUM_SCALE = 1.0 / 16.0
#: The limiter works on blocks of this many samples (the mel's hop at 22.05 kHz, 11.6 ms): its gain
#: is set per block and interpolated between block centres.
LIMITER_BLOCK = 256
#: ...and each block's gain is what the loudest of the blocks this many either side of it needs, so
#: the gain eases in and out over a few blocks instead of jumping at a peak.
LIMITER_REACH = 2


def limit_peaks(wav: torch.Tensor, limit: float = PEAK_LIMIT) -> torch.Tensor:
    """``wav`` (B, N) scaled down smoothly wherever a sample passes ``limit``, never past it.

    A sample's gain is interpolated between the gains of the two blocks whose centres surround it;
    both blocks' gains answer to the peak of the sample's own block (each block looks
    ``LIMITER_REACH`` ≥ 1 blocks either side), so the interpolated gain is at most limit / |x|."""
    block, reach = LIMITER_BLOCK, LIMITER_REACH
    peaks = F.max_pool1d(wav.abs()[:, None], block, stride=block, ceil_mode=True)
    peaks = F.max_pool1d(peaks, 2 * reach + 1, stride=1, padding=reach)
    gain = torch.clamp(limit / peaks.clamp_min(1e-9), max=1.0)
    ramp = torch.cat([torch.arange(1, block + 1), torch.arange(block, 0, -1)]).to(wav.dtype) / block
    kernel = ramp[None, None]  # linear interpolation between block centres, normalised at the edges
    spread = F.conv_transpose1d(gain, kernel, stride=block, padding=block // 2)
    weight = F.conv_transpose1d(torch.ones_like(gain), kernel, stride=block, padding=block // 2)
    gain = (spread / weight)[:, 0, : wav.shape[-1]]
    return (wav * gain).clamp(-limit, limit)  # the clamp only catches rounding


def bin_spreading(filterbank: np.ndarray) -> np.ndarray:
    """(n_mels, bins) weights that turn per-band gains into per-bin gains: each bin the filterbank-weighted
    mean of the bands over it; a bin no band covers (DC, above the top band) takes its nearest covered bin's."""
    cover = filterbank.sum(0)
    covered = np.flatnonzero(cover > 0)
    if covered.size == 0:
        raise ValueError("mel filterbank covers no STFT bin")
    nearest = covered[np.abs(np.arange(filterbank.shape[1])[:, None] - covered[None]).argmin(1)]
    source = filterbank[:, nearest]
    return (source / source.sum(0, keepdims=True)).astype(np.float64)


class MelMatching(nn.Module):
    """(audio (B, frames · hop) at the mel's rate, its log-mel (B, frames, n_mels)) → audio, same shape
    (a vocoder's output: exactly ``hop`` samples a mel frame, so the STFT has the mel's frames)."""

    def __init__(self, mel: MelConfig, cfg: MelMatchingConfig | None = None) -> None:
        super().__init__()
        if mel.log != "ln" or mel.power != 1.0 or mel.padding != "reflect_half":
            raise ValueError(
                "mel matching needs the HiFi-GAN convention: a natural-log magnitude mel framed without "
                f"centring (log='ln', power=1, padding='reflect_half'), got {mel}"
            )
        self.mel = mel
        self.cfg = cfg or MelMatchingConfig()
        fb = np.asarray(mel_filterbank(mel), np.float64)
        bins = np.arange(mel.n_fft // 2 + 1)[:, None]
        n = np.arange(mel.n_fft)
        window = np.asarray(analysis_window(mel), np.float64)
        phase = 2 * np.pi * bins * n / mel.n_fft
        analysis = np.concatenate([np.cos(phase), -np.sin(phase)]) * window * SPECTRUM_SCALE
        self.register_buffer("analysis", torch.from_numpy(analysis)[:, None].float(), persistent=False)
        # Real inverse DFT (every bin but DC and Nyquist counts twice), windowed for overlap-add.
        weight = np.where((bins == 0) | (bins == mel.n_fft // 2), 1.0, 2.0) / mel.n_fft
        synthesis = np.concatenate([weight * np.cos(phase), -weight * np.sin(phase)]) * window / SPECTRUM_SCALE
        self.register_buffer("synthesis", torch.from_numpy(synthesis)[:, None].float(), persistent=False)
        self.register_buffer("window_sq", torch.from_numpy(window**2).float()[None, None], persistent=False)
        self.register_buffer("filterbank", torch.from_numpy(fb.copy()).float(), persistent=False)
        self.register_buffer("spread", torch.from_numpy(bin_spreading(fb).T.copy()).float(), persistent=False)

    def forward(self, wav: torch.Tensor, log_mel: torch.Tensor) -> torch.Tensor:
        cfg, mel = self.cfg, self.mel
        if cfg.iterations == 0:
            return wav
        pad = (mel.n_fft - mel.hop_length) // 2  # frame t centred where the mel's frame t is
        floor = mel.log_floor * SPECTRUM_SCALE
        target = torch.exp(log_mel * mel.norm_std + mel.norm_mean).clamp_min(mel.log_floor).transpose(1, 2)
        target = target * SPECTRUM_SCALE
        limit = math.log(10.0) * cfg.max_gain_db / 20.0
        bins = mel.n_fft // 2 + 1
        ones = None
        for _ in range(cfg.iterations):
            spec = F.conv1d(F.pad(wav[:, None], (pad, pad), mode="reflect"), self.analysis, stride=mel.hop_length)
            re, im = spec[:, :bins], spec[:, bins:]
            have = torch.matmul(self.filterbank, torch.sqrt(re.square() + im.square()))
            log_gain = torch.log(target + floor) - torch.log(have + floor)
            # Spread in the log domain (each bin's gain the weighted geometric mean of its bands'): a linear
            # mean lets one band's large gain swamp its neighbour's where their filters overlap.
            gain = torch.exp(torch.matmul(self.spread, log_gain.clamp(-limit, limit) * cfg.relaxation))
            scaled = torch.cat([re * gain, im * gain], dim=1)
            out = F.conv_transpose1d(scaled, self.synthesis, stride=mel.hop_length)[:, 0]
            if ones is None:
                ones = F.conv_transpose1d(torch.ones_like(scaled[:, :1]), self.window_sq, stride=mel.hop_length)[:, 0]
            out = out / ones.clamp_min(1e-3)
            wav = out[:, pad : pad + wav.shape[-1]]
        return limit_peaks(wav)
