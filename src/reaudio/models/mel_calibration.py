"""A fixed correction of the VAE decoder's log-mel before the vocoder.

A decoder trained to reconstruct (L1, even with a discriminator) returns something like the
middle of the log-mels a latent could stand for: its frames change more smoothly from one to
the next than a real clip's (on the default model's training clips real frame-to-frame steps
are 1.3-2.3x the decoded ones, band by band), and the vocoder renders that smoothness as a
duller texture. Per mel band, the calibration first matches the decoded band's mean and spread
to real clips' (an affine map), then restores the frame-to-frame detail by unsharp masking
along time, by the amount that brings the band's frame-to-frame spread to the real clips', and
last does the same across bands (one amount for all: decoded spectra are smoother across
frequency too, by 1.2x after the time sharpening). All of it is fitted on training clips
(``reaudio.training.decoder_calibration``) and stored with the decoder; the exported decoder
graph applies it, so the runtime needs nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MelCalibration:
    """Per mel band (each tuple has n_mels values).

    Attributes:
        scale, bias: the decoded log-mel ``m`` becomes ``m * scale + bias``.
        sharpen: then ``m + sharpen * (m - mean of m over the frames t-1, t, t+1)``.
        sharpen_freq: then ``m + sharpen_freq * (m - mean of m over the bands f-1, f, f+1)``.
    """

    scale: tuple[float, ...]
    bias: tuple[float, ...]
    sharpen: tuple[float, ...]
    sharpen_freq: float = 0.0

    def __post_init__(self) -> None:
        n = len(self.scale)
        if n == 0 or len(self.bias) != n or len(self.sharpen) != n:
            lengths = f"{len(self.scale)}, {len(self.bias)}, {len(self.sharpen)}"
            raise ValueError(f"mel calibration: scale, bias and sharpen need one value per mel band each ({lengths})")
        if min(self.scale) <= 0 or min(self.sharpen) < 0 or self.sharpen_freq < 0:
            raise ValueError("mel calibration: scale must be > 0, sharpen and sharpen_freq >= 0 in every band")

    @property
    def n_mels(self) -> int:
        return len(self.scale)

    def to_dict(self) -> dict:
        per_band = {k: [round(float(v), 6) for v in getattr(self, k)] for k in ("scale", "bias", "sharpen")}
        return per_band | {"sharpen_freq": round(float(self.sharpen_freq), 6)}

    @classmethod
    def from_dict(cls, data: dict, where: str = "mel calibration") -> MelCalibration:
        missing = [k for k in ("scale", "bias", "sharpen") if k not in data]
        if missing:
            raise ValueError(f"{where}: missing {', '.join(missing)} (needs scale, bias and sharpen per mel band)")
        per_band = (tuple(float(v) for v in data[k]) for k in ("scale", "bias", "sharpen"))
        return cls(*per_band, float(data.get("sharpen_freq", 0.0)))


class MelCalibrationLayer(nn.Module):
    """Applies a :class:`MelCalibration` to log-mels (B, T, n_mels)."""

    def __init__(self, calibration: MelCalibration) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(calibration.scale, dtype=torch.float32))
        self.register_buffer("bias", torch.tensor(calibration.bias, dtype=torch.float32))
        self.register_buffer("sharpen", torch.tensor(calibration.sharpen, dtype=torch.float32))
        self.sharpen_freq = calibration.sharpen_freq

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        mel = mel * self.scale + self.bias
        mel = mel + self.sharpen * (mel - local_mean(mel))
        if self.sharpen_freq:
            mel = mel + self.sharpen_freq * (mel - band_mean(mel))
        return mel


def local_mean(mel: torch.Tensor) -> torch.Tensor:
    """Mean over the frames t-1, t, t+1 of log-mels (B, T, F); the edge frames repeat."""
    x = F.pad(mel.transpose(1, 2), (1, 1), mode="replicate")  # (B, F, T + 2)
    return F.avg_pool1d(x, 3, stride=1).transpose(1, 2)


def band_mean(mel: torch.Tensor) -> torch.Tensor:
    """Mean over the bands f-1, f, f+1 of log-mels (B, T, F); the edge bands repeat."""
    return F.avg_pool1d(F.pad(mel, (1, 1), mode="replicate"), 3, stride=1)
