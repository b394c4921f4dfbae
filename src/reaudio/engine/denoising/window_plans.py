"""Where the windows of a long or looping clip lie, in latent frames, and how their outputs blend.

Denoising (MultiDiffusion, Bar-Tal et al. 2023): every step, each window of the latent
predicts, and overlapping predictions are averaged with smooth weights that sum to one
at every frame. Decoding: each window decodes a core of frames plus context on both
sides, and neighbouring cores are cross-faded in the waveform. A loop's windows wrap
around the end of the latent, so its seam is just another point inside some window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowPlan:
    """Denoising windows over ``total`` frames.

    Attributes:
        total: frames of the clip's latent.
        indices: (windows, length) frame of each window position (modulo ``total`` for a loop).
        weights: (windows, length) blend weights; at every frame they sum to one over the windows.
        circular: the windows wrap around the end (a loop).
    """

    total: int
    indices: np.ndarray
    weights: np.ndarray
    circular: bool

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def length(self) -> int:
        return self.indices.shape[1]


def _ramp(length: int, rise: int, left: bool, right: bool) -> np.ndarray:
    """Weights of one window's positions: a raised-cosine rise over ``rise`` frames at each tapered
    edge, flat elsewhere; never zero, so every frame a window covers counts."""
    w = np.ones(length, dtype=np.float64)
    if rise > 0:
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(rise) + 0.5) / rise)
        n = min(rise, length)
        if left:
            w[:n] = np.minimum(w[:n], edge[:n])
        if right:
            w[length - n :] = np.minimum(w[length - n :], edge[:n][::-1])
    return w


def plan_windows(total: int, window: int, overlap: int, circular: bool = False) -> WindowPlan:
    """Windows of ``window`` frames overlapping by at least ``overlap`` that cover ``total`` frames.

    A clip that fits one window gets one window with weight one everywhere (so the windowed loop
    reproduces the one-shot loop exactly). A loop gets at least two windows, the second one centred
    on the seam, even when the clip fits one window: otherwise no window would see across the seam.
    """
    if total < 1 or window < 1:
        raise ValueError(f"total={total} and window={window} frames must be >= 1")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap={overlap} frames must be in 0..{window - 1} (the window is {window})")
    if not circular:
        if total <= window:
            return WindowPlan(total, np.arange(total)[None], np.ones((1, total)), False)
        count = -(-(total - overlap) // (window - overlap))
        starts = np.round(np.linspace(0, total - window, count)).astype(np.int64)
        rise = min(overlap, window - int(np.max(np.diff(starts))))
        weights = np.stack([_ramp(window, rise, i > 0, i < count - 1) for i in range(count)])
        indices = starts[:, None] + np.arange(window)[None]
        return WindowPlan(total, indices, _normalised(total, indices, weights), False)
    length = min(window, total)
    overlap = min(overlap, length // 2)
    count = max(2, -(-total // max(1, length - overlap)))
    starts = np.round(np.arange(count) * total / count).astype(np.int64)
    rise = max(1, min(overlap, length - int(np.max(np.diff(np.append(starts, starts[0] + total))))))
    weights = np.stack([_ramp(length, rise, True, True) for _ in range(count)])
    indices = (starts[:, None] + np.arange(length)[None]) % total
    return WindowPlan(total, indices, _normalised(total, indices, weights), True)


def _normalised(total: int, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    sums = np.zeros(total)
    np.add.at(sums, indices, weights)
    if np.any(sums <= 0):
        raise AssertionError(f"frames {np.flatnonzero(sums <= 0)[:5]} are covered by no window")
    return weights / sums[indices]


@dataclass(frozen=True)
class DecodeWindow:
    """One decoder call of a windowed decode.

    Attributes:
        frames: latent frames it decodes (modulo the clip for a loop): its core plus context.
        keep: (first, last) frame positions, within ``frames``, whose audio it contributes:
            the core plus the cross-fade margins.
        start: the clip frame where its kept audio begins (negative or past the end wraps, for a loop).
    """

    frames: np.ndarray
    keep: tuple[int, int]
    start: int


@dataclass(frozen=True)
class DecodePlan:
    """Windows of a decode and the width of the cross-fades between neighbours, in frames."""

    total: int
    windows: list[DecodeWindow]
    fade: int
    circular: bool


def plan_decode(total: int, window: int, context: int, circular: bool = False) -> DecodePlan:
    """Cores of at most ``window - 2 * context`` frames tiling the clip, each decoded with
    ``context`` frames either side; neighbours cross-fade over ``2 * fade`` frames centred on
    their shared boundary, with ``fade`` at most half the context (the audio kept is never at
    a window's edge) and a quarter of a core.

    A loop's cores are shifted by half a core, so the seam lies inside a core decoded across it.
    """
    if window < 1 or context < 0:
        raise ValueError(f"window={window} frames must be >= 1 and context={context} >= 0")
    if not circular and total <= window:
        return DecodePlan(total, [DecodeWindow(np.arange(total), (0, total), 0)], 0, False)
    context = min(context, max(0, (window - 1) // 2))
    core = max(1, window - 2 * context)
    count = -(-total // core)
    bounds = np.round(np.arange(count + 1) * total / count).astype(np.int64)
    shortest = int(np.min(np.diff(bounds)))
    fade = max(0, min(context // 2, shortest // 4))
    if circular:
        bounds = bounds + shortest // 2
    windows = []
    for i in range(count):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        if circular:
            frames = np.arange(lo - context, hi + context) % total
            windows.append(DecodeWindow(frames, (context - fade, context + hi - lo + fade), lo - fade))
            continue
        first, last = max(0, lo - context), min(total, hi + context)
        keep_lo, keep_hi = (
            max(0, lo - fade if i > 0 else 0),
            min(total, hi + fade if i < count - 1 else hi),
        )
        windows.append(DecodeWindow(np.arange(first, last), (keep_lo - first, keep_hi - first), keep_lo))
    return DecodePlan(total, windows, fade, circular)


def segment_shares(windows: WindowPlan, starts: list[int]) -> np.ndarray:
    """(windows, segments): how much of each window's weight falls in each segment of a clip whose
    segments begin at latent frames ``starts`` (the first at 0); each row sums to one."""
    segment_of = np.searchsorted(np.asarray(starts), np.arange(windows.total), side="right") - 1
    shares = np.zeros((len(windows), len(starts)))
    for w in range(len(windows)):
        np.add.at(shares[w], segment_of[windows.indices[w]], windows.weights[w])
    return shares / shares.sum(axis=1, keepdims=True)
