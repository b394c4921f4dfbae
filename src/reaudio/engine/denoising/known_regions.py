"""Denoising only part of a clip: the rest is a start clip's latent, noised to each step.

Inpainting and continuation regenerate some latent frames and keep the others. After every step the
kept frames are set to the start clip's encoded latent noised to the level the next step expects
(α·clean + σ·noise, with one noise draw per clip: the forward process of latent-mask inpainting,
as RePaint does without its resampling), so the model always sees a consistent noisy clip and the
generated frames grow out of their surroundings. ``keep`` ramps from 1 to 0 over a few frames just
inside each generated range, so the join has no edge; after the last step the kept frames are the
start clip's latent exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sampler import SamplerPlan

#: Latent frames over which ``keep`` ramps into a generated range (inside it).
BLEND_FRAMES = 3


@dataclass(frozen=True)
class KnownLatent:
    """The given part of a batch's latents.

    Attributes:
        clean: the start clips' scaled latents (B, C, T, F).
        keep: (B, 1, T, 1) in [0, 1]: 1 where the start clip is kept, 0 where the model generates.
        noise: the noise the kept frames are noised with (B, C, T, F), the clips' own seeds' draw.
    """

    clean: np.ndarray
    keep: np.ndarray
    noise: np.ndarray

    def at(self, alpha: float, sigma: float) -> np.ndarray:
        """The kept frames noised to (alpha, sigma)."""
        return (alpha * self.clean.astype(np.float64) + sigma * self.noise.astype(np.float64)).astype(np.float32)

    def impose(self, latent: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
        """``latent`` with its kept frames replaced by the start clip at that noise level."""
        return (self.keep * self.at(alpha, sigma) + (1.0 - self.keep) * latent).astype(np.float32)

    def window(self, lo: int, hi: int) -> KnownLatent:
        """The frames [lo, hi) (a denoising window's part)."""
        return KnownLatent(self.clean[:, :, lo:hi], self.keep[:, :, lo:hi], self.noise[:, :, lo:hi])


def levels_after_steps(plan: SamplerPlan) -> np.ndarray:
    """(steps, 2): the (α, σ) of the latent each step returns — the next step's input level, and
    (1, 0), clean, after the last."""
    levels = np.zeros((len(plan), 2), dtype=np.float64)
    levels[:-1] = plan.coefs[1:, :2]
    levels[-1] = (1.0, 0.0)
    return levels


def keep_mask(frames: int, generated: list[tuple[int, int]], blend: int = BLEND_FRAMES) -> np.ndarray:
    """(frames,) keep weights: 0 inside each [start, end) frame range, 1 elsewhere, ramping over
    ``blend`` frames inside a range from each edge that borders kept frames."""
    keep = np.ones(frames, dtype=np.float32)
    for start, end in generated:
        start, end = max(0, start), min(frames, end)
        if end <= start:
            continue
        inner = np.zeros(end - start, dtype=np.float32)
        ramp = min(blend, (end - start) // 2)
        if ramp:
            steps = (np.arange(ramp, 0, -1, dtype=np.float32)) / (ramp + 1)  # e.g. 0.75, 0.5, 0.25
            if start > 0:
                inner[:ramp] = np.maximum(inner[:ramp], steps)
            if end < frames:
                inner[-ramp:] = np.maximum(inner[-ramp:], steps[::-1])
        keep[start:end] = np.minimum(keep[start:end], inner)
    return keep
