"""Optional clip post-processing: silence trimming, RMS loudness target, peak normalisation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PostProcess:
    """All off by default.

    Attributes:
        trim_db: trim leading/trailing audio quieter than this many dB below the clip's peak.
        loudness_db: scale so the clip's RMS level is this many dBFS (e.g. -20).
        peak_db: then scale down (never up, unless no loudness target) so the peak is at most this dBFS.
    """

    trim_db: float | None = None
    loudness_db: float | None = None
    peak_db: float | None = None

    def __post_init__(self) -> None:
        for name in ("trim_db", "loudness_db", "peak_db"):
            value = getattr(self, name)
            if value is not None and not -120.0 <= value <= 0.0:
                raise ValueError(f"{name}={value} must be between -120 and 0 dB")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.trim_db, self.loudness_db, self.peak_db))

    def __call__(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        x = np.asarray(audio, dtype=np.float32)
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak == 0.0:
            return x
        if self.trim_db is not None:
            loud = np.flatnonzero(np.abs(x) >= peak * 10 ** (self.trim_db / 20))
            margin = int(0.01 * sample_rate)  # keep 10 ms around the sound
            x = x[max(0, loud[0] - margin) : loud[-1] + 1 + margin]
        if self.loudness_db is not None:
            rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
            if rms > 0:
                x = x * (10 ** (self.loudness_db / 20) / rms)
        if self.peak_db is not None:
            target = 10 ** (self.peak_db / 20)
            peak = float(np.abs(x).max())
            if peak > target or self.loudness_db is None:
                x = x * (target / peak)
        return x.astype(np.float32)
