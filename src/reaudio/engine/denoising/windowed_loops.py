"""Denoising and decoding a clip window by window, so memory depends on the window, not the clip."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .known_regions import KnownLatent, levels_after_steps
from .loop import step_feeds
from .sampler import SamplerPlan
from .window_plans import DecodePlan, WindowPlan

#: Windows denoised in one graph call (at least the clips of a batch): a constant, so a clip's
#: audio does not depend on the batch size a job ran with.
WINDOWS_PER_CALL = 8


def _chunks(batch: int, windows: int, per_call: int) -> list[list[tuple[int, int]]]:
    pairs = [(b, w) for b in range(batch) for w in range(windows)]
    per_call = max(1, per_call)
    return [pairs[i : i + per_call] for i in range(0, len(pairs), per_call)]


def denoise_windowed(
    runner,
    plan: SamplerPlan,
    latent: np.ndarray,
    conditions: dict[str, np.ndarray],
    windows: WindowPlan,
    per_call: int = WINDOWS_PER_CALL,
    on_step: Callable[[int, int], None] | None = None,
    known: KnownLatent | None = None,
    per_window: bool = False,
) -> np.ndarray:
    """The host loop of :func:`~reaudio.engine.denoising.loop.denoise_host` over ``windows`` of the latent
    (with ``known``, its kept frames re-imposed after every step, as there).

    Each step every window is denoised with its clip's conditions, and both graph outputs
    (the next latent and the data prediction the second-order sampler reuses) are blended
    with the window weights. Both are affine in the window's inputs with coefficients shared
    by all windows, so blending them is MultiDiffusion's least-squares average of the
    windows' proposals. ``per_call`` caps the windows in one graph call; ``on_step(done, steps)``
    is called after each step (progress for clips that take minutes). ``per_window``: ``conditions``
    has a row per (clip, window), clip-major (a timeline's windows follow their own prompts).
    """
    latent = np.asarray(latent, dtype=np.float32)
    batch = len(latent)
    weights = windows.weights.astype(np.float32)[:, :, None]  # (windows, length, 1): broadcast over (C, length, F)
    chunks = _chunks(batch, len(windows), per_call)
    prev_x0 = np.zeros_like(latent)
    levels = levels_after_steps(plan) if known is not None else None
    for i in range(len(plan)):
        next_latent, x0 = np.zeros_like(latent), np.zeros_like(latent)
        for chunk in chunks:
            rows = np.array([b * len(windows) + w if per_window else b for b, w in chunk])
            frames = [windows.indices[w] for _, w in chunk]
            feeds = {
                "latent": np.stack([latent[b][:, f] for (b, _), f in zip(chunk, frames)]),
                "prev_x0": np.stack([prev_x0[b][:, f] for (b, _), f in zip(chunk, frames)]),
                **{name: value[rows] for name, value in conditions.items()},
                **step_feeds(plan, i, len(chunk)),
            }
            out_latent, out_x0 = runner.run(feeds)
            for j, ((b, w), f) in enumerate(zip(chunk, frames)):
                # A window's frames are distinct, so fancy-index accumulation adds each once.
                next_latent[b][:, f] += weights[w] * out_latent[j]
                x0[b][:, f] += weights[w] * out_x0[j]
        latent, prev_x0 = next_latent, x0
        if known is not None:
            latent = known.impose(latent, *levels[i])
        if on_step is not None:
            on_step(i + 1, len(plan))
    return latent


def _fade_gain(a: np.ndarray, b: np.ndarray, fade_out: np.ndarray) -> np.ndarray:
    """Per-sample gains of a cross-fade between overlapping renderings ``a`` and ``b`` (batch, n):
    equal power for unrelated signals, equal gain for identical ones, and in between by their
    correlation — two decodes of the same latent are nearly identical, where an equal-power
    fade would add 3 dB."""
    num = np.sum(a * b, axis=1, dtype=np.float64)
    den = np.sqrt(np.sum(a * a, axis=1, dtype=np.float64) * np.sum(b * b, axis=1, dtype=np.float64))
    r = np.clip(np.divide(num, den, out=np.ones_like(num), where=den > 0), 0.0, 1.0)[:, None]
    fade_in = 1.0 - fade_out[None]
    return 1.0 / np.sqrt(fade_out[None] ** 2 + fade_in**2 + 2 * r * fade_out[None] * fade_in)


def decode_windowed(runner, latent: np.ndarray, plan: DecodePlan, samples_per_frame: int) -> np.ndarray:
    """Waveforms (batch, frames × samples_per_frame) of ``latent`` decoded window by window."""
    batch, total = len(latent), latent.shape[2]
    if len(plan.windows) == 1 and not plan.circular:
        (audio,) = runner.run({"latent": latent})
        return audio
    n = total * samples_per_frame
    fade = plan.fade * samples_per_frame
    out = np.zeros((batch, n), dtype=np.float32)
    pieces: list[tuple[int, np.ndarray]] = []
    for window in plan.windows:
        (audio,) = runner.run({"latent": np.ascontiguousarray(latent[:, :, window.frames])})
        lo, hi = window.keep
        pieces.append(
            (
                window.start * samples_per_frame,
                audio[:, lo * samples_per_frame : hi * samples_per_frame],
            )
        )
    # Each piece: [fade-in | body | fade-out]; the first and last of a clip that does not loop
    # have no fade at the clip's ends.
    ramp = 0.5 + 0.5 * np.cos(np.pi * (np.arange(2 * fade) + 0.5) / (2 * fade)) if fade else np.zeros(0)
    count = len(pieces)
    for i, (start, piece) in enumerate(pieces):
        head = 2 * fade if (plan.circular or i > 0) else 0
        tail = 2 * fade if (plan.circular or i < count - 1) else 0
        body = piece[:, head : piece.shape[1] - tail]
        positions = (start + head + np.arange(body.shape[1])) % n
        out[:, positions] = body
        if not tail:
            continue
        j = (i + 1) % count
        next_start, next_piece = pieces[j]
        a, b = piece[:, piece.shape[1] - tail :], next_piece[:, :tail]
        gain = _fade_gain(a, b, ramp)
        positions = (start + piece.shape[1] - tail + np.arange(tail)) % n
        out[:, positions] = ((ramp[None] * a + (1.0 - ramp[None]) * b) * gain).astype(np.float32)
    return out
