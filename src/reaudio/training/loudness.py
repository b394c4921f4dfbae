"""Loudness normalisation of training audio (ITU-R BS.1770 integrated loudness via pyloudnorm).

Training clips whose levels spread over 40 dB teach the model no level at all;
normalised clips teach it one, and the peak ceiling keeps the vocoder's target
away from full scale.
"""

from __future__ import annotations

import numpy as np

#: BS.1770 gates 400-ms blocks; shorter clips fall back to their RMS level.
_MIN_BLOCK_SECONDS = 0.4


def loudness_db(wav: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS (clips shorter than one gating block: RMS in dBFS); -inf for silence."""
    wav = np.asarray(wav, dtype=np.float64)
    if len(wav) >= _MIN_BLOCK_SECONDS * sample_rate:
        import pyloudnorm

        value = float(pyloudnorm.Meter(sample_rate).integrated_loudness(wav))
        if np.isfinite(value):
            return value
    rms = float(np.sqrt(np.mean(wav**2))) if len(wav) else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


def normalise_loudness(wav: np.ndarray, sample_rate: int, target_db: float, peak_db: float = -1.0) -> np.ndarray:
    """``wav`` scaled to ``target_db`` loudness, or less where its peak would pass ``peak_db`` dBFS."""
    level = loudness_db(wav, sample_rate)
    peak = float(np.max(np.abs(wav))) if len(wav) else 0.0
    if not np.isfinite(level) or peak == 0.0:
        return wav
    gain_db = min(target_db - level, peak_db - 20 * np.log10(peak))
    return (wav * 10 ** (gain_db / 20)).astype(wav.dtype)
