"""Loudness and peaks as broadcast and library tools measure them.

Integrated loudness is ITU-R BS.1770-4 (K-weighting, 400-ms gated blocks) through
pyloudnorm; a clip shorter than one block is measured as one block of its own
length. True peak is the sample peak of a 4× oversampled copy (BS.1770 annex 2),
resampled with soxr, so inter-sample overs that a DAC would produce count.
"""

from __future__ import annotations

import numpy as np

#: BS.1770's gating block.
BLOCK_SECONDS = 0.4
#: Oversampling factor of the true-peak meter.
TRUE_PEAK_OVERSAMPLING = 4
SILENCE = float("-inf")


def integrated_lufs(wav: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS; -inf for silence (or a clip whose every block is gated out)."""
    import pyloudnorm

    x = np.asarray(wav, dtype=np.float64)
    if len(x) == 0 or not np.any(x):
        return SILENCE
    if len(x) < 2:
        return SILENCE
    # A clip shorter than one 400-ms block is one block of its own length, less half a sample:
    # pyloudnorm refuses a block that is longer than the clip, which len/rate can be after rounding.
    block = min(BLOCK_SECONDS, (len(x) - 0.5) / sample_rate)
    value = float(pyloudnorm.Meter(sample_rate, block_size=block).integrated_loudness(x))
    return value if np.isfinite(value) else SILENCE


#: Samples oversampled at a time by the true-peak meter: a 10-minute clip's 4× copy never exists whole.
TRUE_PEAK_CHUNK = 1 << 16


def true_peak_db(wav: np.ndarray, sample_rate: int) -> float:
    """True peak in dBTP (dB relative to full scale, inter-sample peaks included); -inf for silence.

    The oversampling streams through the clip (soxr's stream gives the same samples as one call)."""
    import soxr

    x = np.asarray(wav)
    if len(x) == 0 or not np.any(x):
        return SILENCE
    stream = soxr.ResampleStream(sample_rate, sample_rate * TRUE_PEAK_OVERSAMPLING, 1, dtype="float64", quality="VHQ")
    peak = float(np.max(np.abs(x)))
    for start in range(0, len(x), TRUE_PEAK_CHUNK):
        chunk = np.asarray(x[start : start + TRUE_PEAK_CHUNK], dtype=np.float64)
        up = stream.resample_chunk(chunk, last=start + TRUE_PEAK_CHUNK >= len(x))
        if len(up):
            peak = max(peak, float(np.max(np.abs(up))))
    return 20 * float(np.log10(peak))


def loudness_gain_db(wav: np.ndarray, sample_rate: int, target_lufs: float | None, ceiling_dbtp: float | None) -> float:
    """The one gain (dB) that brings ``wav`` to ``target_lufs``, lowered where its true peak would
    pass ``ceiling_dbtp``. Either may be None; silence gets 0 dB."""
    gain = 0.0
    if target_lufs is not None:
        level = integrated_lufs(wav, sample_rate)
        if level == SILENCE:
            return 0.0
        gain = target_lufs - level
    if ceiling_dbtp is not None:
        peak = true_peak_db(wav, sample_rate)
        if peak != SILENCE and peak + gain > ceiling_dbtp:
            gain = ceiling_dbtp - peak
    return gain
