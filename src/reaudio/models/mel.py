"""Log-mel spectrogram in torch, numerically matching ``reaudio.engine.audio.frontend.log_mel``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reaudio.engine.audio.frontend import MelConfig, analysis_window, mel_filterbank


class LogMel(nn.Module):
    """Audio (B, samples) or (samples,) → log-mel (B, frames, n_mels).

    The STFT runs in float64: the log of small mel bins amplifies float32
    round-off past the 1e-4 parity budget with the NumPy front end, and the
    front end costs little next to the models it feeds.
    """

    def __init__(self, cfg: MelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.from_numpy(analysis_window(cfg).copy()), persistent=False)
        self.register_buffer("fbank", torch.from_numpy(mel_filterbank(cfg).copy()), persistent=False)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        squeeze = audio.dim() == 1
        x = audio.reshape(-1, audio.shape[-1]).to(torch.float64)
        x = F.pad(x.unsqueeze(1), (cfg.pad_amount, cfg.pad_amount), mode="reflect").squeeze(1)
        spec = torch.stft(
            x,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            window=self.window,
            center=False,
            return_complex=True,
        )  # (B, n_freqs, T)
        mag = spec.real.square() + spec.imag.square()
        if cfg.power == 1.0:
            mag = mag.sqrt()
        mel = torch.matmul(self.fbank, mag).transpose(1, 2)  # (B, T, n_mels)
        if cfg.log == "ln":
            mel = torch.log(mel.clamp_min(cfg.log_floor))
        elif cfg.log == "log10":
            mel = torch.log10(mel.clamp_min(cfg.log_floor))
        mel = ((mel - cfg.norm_mean) / cfg.norm_std).to(audio.dtype if audio.is_floating_point() else torch.float32)
        return mel[0] if squeeze else mel
