"""The learning-rate curve of a training run (torch-free, so the CLI can offer its choices)."""

from __future__ import annotations

import math

LR_DECAYS = ("constant", "cosine")


def learning_rate(step: int, steps: int, lr: float, warmup_steps: int, decay: str, final_fraction: float) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of a ``steps``-step run.

    Linear warm-up to ``lr`` over ``warmup_steps``; then ``lr`` to the end ("constant"), or half
    a cosine from ``lr`` after the warm-up down to ``final_fraction`` × ``lr`` at the last step
    ("cosine"). A function of the step alone, so a run resumed with the same ``steps`` continues
    on the same curve; resuming with another ``steps`` moves to that run's curve (the rate jumps).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if decay == "constant":  # the choices are checked where the run is configured (TrainConfig)
        return lr
    progress = min(1.0, (step + 1 - warmup_steps) / max(1, steps - warmup_steps))
    floor = lr * final_fraction
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
