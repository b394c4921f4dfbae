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


#: Clips longer than this are measured by :func:`_streamed_lufs` (the same arithmetic as pyloudnorm's,
#: a chunk at a time), so a 10-minute clip's filtered float64 copies never exist whole.
STREAMED_LUFS_SECONDS = 60.0
_LUFS_CHUNK = 1 << 18


def integrated_lufs(wav: np.ndarray, sample_rate: int) -> float:
    """Integrated loudness in LUFS; -inf for silence (or a clip whose every block is gated out)."""
    import pyloudnorm

    if len(wav) > STREAMED_LUFS_SECONDS * sample_rate:
        return _streamed_lufs(wav, sample_rate) if np.any(wav) else SILENCE
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


def _streamed_lufs(wav: np.ndarray, sample_rate: int) -> float:
    """pyloudnorm's ``Meter.integrated_loudness`` of a mono clip, computed chunk by chunk: its
    K-weighting filters run with their state carried across chunks and each 400-ms block's mean
    square is summed over the same samples, so the value is pyloudnorm's (tested)."""
    import pyloudnorm
    from scipy.signal import lfilter, lfilter_zi

    meter = pyloudnorm.Meter(sample_rate)
    stages = list(meter._filters.values())  # the meter's own K-weighting (high shelf, then high pass)
    states = [lfilter_zi(f.b, f.a) * 0.0 for f in stages]
    t_g, step, rate = meter.block_size, 1.0 - meter.overlap, meter.rate
    n = len(wav)
    blocks = int(np.round((n / rate - t_g) / (t_g * step))) + 1
    bounds = [(int(t_g * (j * step) * rate), int(t_g * (j * step + 1) * rate)) for j in range(blocks)]
    z = np.zeros(blocks)
    kept = np.zeros(0)  # filtered samples from `offset` on, as far as the next block needs
    offset, j = 0, 0
    for start in range(0, n, _LUFS_CHUNK):
        y = np.asarray(wav[start : start + _LUFS_CHUNK], dtype=np.float64)
        for i, f in enumerate(stages):
            y, states[i] = lfilter(f.b, f.a, y, zi=states[i])
            y = f.passband_gain * y
        kept = np.concatenate([kept, y])
        end = start + len(y)
        while j < blocks and bounds[j][1] <= end:
            lo, hi = bounds[j]
            z[j] = (1.0 / (t_g * rate)) * np.sum(np.square(kept[lo - offset : hi - offset]))
            j += 1
        if j < blocks:
            kept, offset = kept[bounds[j][0] - offset :], bounds[j][0]
    with np.errstate(divide="ignore", invalid="ignore"):
        loudness = [-0.691 + 10.0 * np.log10(np.sum([1.0 * z[i]])) for i in range(blocks)]
        gated = [i for i, level in enumerate(loudness) if level >= -70.0]
        relative = -0.691 + 10.0 * np.log10(np.sum([1.0 * np.mean([z[i] for i in gated])])) - 10.0
        gated = [i for i, level in enumerate(loudness) if level > relative and level > -70.0]
        mean = np.nan_to_num(np.array([np.mean([z[i] for i in gated])]))
        value = -0.691 + 10.0 * np.log10(np.sum([1.0 * mean[0]]))
    return float(value) if np.isfinite(value) else SILENCE


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
