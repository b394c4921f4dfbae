"""How audible a joint in a waveform is, measured the same way at the joint and at ordinary points.

A loop's seam (its end running into its start) or a window boundary of a long clip is
heard when it stands out from the rest of the clip: a step in the waveform, a click
(a spike in the second difference), a sudden change of spectrum, or a dip in level.
Each measure is taken at the joint and at many other points of the same clip, and the
joint is reported as a percentile of those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MEASURES = ("step", "click", "spectral_change", "level_change")


def _spectrum_db(x: np.ndarray) -> np.ndarray:
    window = np.hanning(len(x))
    return 20 * np.log10(np.abs(np.fft.rfft(x * window)) + 1e-6)


def measures_at(x: np.ndarray, point: int, sample_rate: int, span_s: float = 0.05) -> dict[str, float]:
    """The measures at the joint just before sample ``point`` of ``x``, read circularly.

    step: |x[p] - x[p-1]|; click: the largest |second difference| within ±1 ms;
    spectral_change: RMS difference (dB) of the log spectra of the ``span_s`` before and after;
    level_change: |RMS level (dB) after - before| over the same spans.
    """
    n = len(x)
    span = max(8, int(span_s * sample_rate))
    if n < 2 * span + 2:
        raise ValueError(f"clip of {n} samples is too short for {span}-sample spans")
    around = max(1, int(0.001 * sample_rate))
    near = x[(point + np.arange(-around - 1, around + 1)) % n]
    before = x[(point - span + np.arange(span)) % n]
    after = x[(point + np.arange(span)) % n]
    level = lambda seg: 10 * np.log10(np.mean(np.square(seg, dtype=np.float64)) + 1e-12)  # noqa: E731
    return {
        "step": float(abs(x[point % n] - x[(point - 1) % n])),
        "click": float(np.max(np.abs(np.diff(near, 2)))),
        "spectral_change": float(np.sqrt(np.mean((_spectrum_db(after) - _spectrum_db(before)) ** 2))),
        "level_change": float(abs(level(after) - level(before))),
    }


@dataclass(frozen=True)
class SeamReport:
    """Each measure at the joints (their median), and the percentage of ordinary points a joint
    exceeds (the median over joints: about 50 when joints are like any other point)."""

    at_joint: dict[str, float]
    percentile: dict[str, float]
    interior_median: dict[str, float]
    interior_max: dict[str, float]

    def worst_percentile(self) -> float:
        return max(self.percentile.values())


def compare(
    x: np.ndarray,
    joints: list[int],
    sample_rate: int,
    points: int = 400,
    seed: int = 0,
    span_s: float = 0.05,
    circular: bool = True,
    grid: int = 1,
) -> SeamReport:
    """Each measure at ``joints`` against its distribution at ``points`` random points
    at least two spans away from every joint (and from the ends, unless ``circular``).

    ``grid``: ordinary points are taken at multiples of it. Joints fall on latent-frame
    boundaries, where a decoder's upsampling leaves its own periodic pattern; comparing them
    with points of the same phase keeps that pattern out of the comparison.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    span = max(8, int(span_s * sample_rate))
    rng = np.random.default_rng(seed)
    allowed = np.zeros(n, dtype=bool)
    allowed[::grid] = True
    for j in joints:
        allowed[(j + np.arange(-2 * span, 2 * span)) % n] = False
    if not circular:
        allowed[: 2 * span] = allowed[n - 2 * span :] = False
    candidates = np.flatnonzero(allowed)
    if len(candidates) == 0:
        raise ValueError("no ordinary points left to compare with; the clip is too short")
    sample = rng.choice(candidates, size=min(points, len(candidates)), replace=False)
    interior = [measures_at(x, int(p), sample_rate, span_s) for p in sample]
    at = [measures_at(x, j, sample_rate, span_s) for j in joints]
    at_joint = {m: float(np.median([a[m] for a in at])) for m in MEASURES}
    percentile = {m: float(np.median([100 * np.mean([i[m] < a[m] for i in interior]) for a in at])) for m in MEASURES}
    median = {m: float(np.median([i[m] for i in interior])) for m in MEASURES}
    most = {m: float(np.max([i[m] for i in interior])) for m in MEASURES}
    return SeamReport(at_joint, percentile, median, most)


def loop_seam(x: np.ndarray, sample_rate: int, **kwargs) -> SeamReport:
    """The seam of a loop (its last sample running into its first) against ordinary points."""
    return compare(x, [0], sample_rate, circular=True, **kwargs)
