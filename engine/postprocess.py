"""Clip post-processing: silence trimming, RMS loudness target, peak normalisation (all optional),
and the trailing-silence trim of clips whose duration the engine chose."""

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


def trim_tail(audio: np.ndarray, sample_rate: int, floor_db: float = -50.0, min_seconds: float = 0.25) -> np.ndarray:
    """``audio`` without its trailing near-silence: everything after the last 50-ms frame whose
    RMS is within ``floor_db`` of the loudest frame's, plus one frame, with a 10-ms fade-out."""
    frame = max(1, int(0.05 * sample_rate))
    n = len(audio) // frame
    if n < 2:
        return audio
    rms = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1))
    if rms.max() == 0.0:
        return audio
    last = int(np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))[-1])
    end = max(min((last + 2) * frame, len(audio)), min(len(audio), int(min_seconds * sample_rate)))
    if end >= len(audio):
        return audio
    out = np.array(audio[:end], dtype=np.float32)
    fade = min(len(out), int(0.01 * sample_rate))
    out[len(out) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out
