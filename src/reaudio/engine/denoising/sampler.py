"""Sampler math in NumPy: timesteps and the per-step coefficients fed to the denoiser graph.

Every step has the same form, so one exported graph serves every sampler:

    x0   = (x - sigma_s · eps) / alpha_s                  (data prediction)
    next = c_x · x + c_x0 · x0 + c_prev · x0_previous

DDIM (Song et al., 2021, η = 0) is the first-order case; DPM-Solver++(2M)
(Lu et al., 2022) adds the previous step's data prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schedule import NoiseScheduleConfig

SAMPLERS = ("ddim", "dpmpp-2m")
#: Columns of ``SamplerPlan.coefs``.
COEF_NAMES = ("alpha_s", "sigma_s", "c_x", "c_x0", "c_prev")
#: Leading spacing counts from 1, so 1000 steps of a 1000-step schedule would ask for timestep 1000
#: (one past its end; diffusers' DDIM fails there too): 999 at most.
MAX_STEPS = 999


@dataclass(frozen=True)
class SamplerPlan:
    """What the denoising loop feeds the graph: one row per step."""

    sampler: str
    timesteps: np.ndarray  # (steps,) int64, descending
    coefs: np.ndarray  # (steps, 5) float64, columns COEF_NAMES

    def __len__(self) -> int:
        return len(self.timesteps)


def leading_timesteps(schedule: NoiseScheduleConfig, steps: int, offset: int = 1) -> np.ndarray:
    """Evenly spaced timesteps counted from 0 plus ``offset`` (diffusers' "leading" spacing, AudioLDM's)."""
    ratio = schedule.num_train_timesteps // steps
    return (np.arange(steps, dtype=np.int64) * ratio)[::-1].copy() + offset


def start_step(steps: int, strength: float) -> int:
    """Index of the first step run at ``strength`` (diffusers' img2img rule: the last
    ``int(steps · strength)`` steps run; strength 1 runs them all, a tiny one none)."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength={strength} must be in (0, 1]")
    return steps - min(int(steps * strength), steps)


def make_plan(schedule: NoiseScheduleConfig, sampler: str, steps: int, strength: float = 1.0) -> SamplerPlan:
    """Timesteps and coefficients for ``steps`` steps of ``sampler``.

    ``strength`` < 1 keeps only the schedule's last steps (SDEdit, audio-to-audio): the plan
    starts from a noised clean latent (:func:`noised_start`) instead of pure noise; a multistep
    sampler's first kept step is then first order, having no previous step to reuse.
    """
    plan = _full_plan(schedule, sampler, steps)
    start = start_step(steps, strength)
    if start == 0:
        return plan
    coefs = plan.coefs[start:].copy()
    if sampler == "dpmpp-2m" and len(coefs) > 1:
        acp = schedule.alphas_cumprod()
        coefs[0] = _dpm_first_order(acp, plan.timesteps[start], plan.timesteps[start + 1])
    return SamplerPlan(sampler, plan.timesteps[start:].copy(), coefs)


def noised_start(plan: SamplerPlan, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """The plan's starting latent for ``clean``: α·clean + σ·noise at its first timestep
    (the forward process, as diffusers' ``add_noise``); ``clean`` itself when the plan is empty."""
    if not len(plan):
        return clean.astype(np.float32, copy=True)
    alpha, sigma = plan.coefs[0, 0], plan.coefs[0, 1]
    return (alpha * clean.astype(np.float64) + sigma * noise.astype(np.float64)).astype(np.float32)


def _lam(a: float) -> float:
    return 0.5 * np.log(a / (1 - a))  # log(alpha / sigma)


def _dpm_first_order(acp: np.ndarray, s: int, t: int) -> np.ndarray:
    a_s, a_t = acp[s], acp[t]
    phi = np.expm1(-(_lam(a_t) - _lam(a_s)))  # e^{-h} - 1
    return np.array([np.sqrt(a_s), np.sqrt(1 - a_s), np.sqrt(1 - a_t) / np.sqrt(1 - a_s), -np.sqrt(a_t) * phi, 0.0])


def _full_plan(schedule: NoiseScheduleConfig, sampler: str, steps: int) -> SamplerPlan:
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; valid: {', '.join(SAMPLERS)}")
    most = min(MAX_STEPS, schedule.num_train_timesteps - 1)
    if not 1 <= steps <= most:
        raise ValueError(f"steps={steps} must be in 1..{most}")
    acp = schedule.alphas_cumprod()
    ts = leading_timesteps(schedule, steps)
    ratio = schedule.num_train_timesteps // steps
    coefs = np.zeros((steps, 5), dtype=np.float64)
    if sampler == "ddim":
        for i, t in enumerate(ts):
            prev = t - ratio
            # The last step lands on alphas_cumprod[0] (AudioLDM's set_alpha_to_one=False).
            a_s, a_t = acp[t], acp[prev] if prev >= 0 else acp[0]
            alpha_s, sigma_s = np.sqrt(a_s), np.sqrt(1 - a_s)
            alpha_t, sigma_t = np.sqrt(a_t), np.sqrt(1 - a_t)
            coefs[i] = alpha_s, sigma_s, sigma_t / sigma_s, alpha_t - sigma_t * alpha_s / sigma_s, 0.0
        return SamplerPlan(sampler, ts, coefs)

    for i, s in enumerate(ts):
        a_s = acp[s]
        alpha_s, sigma_s = np.sqrt(a_s), np.sqrt(1 - a_s)
        if i == steps - 1:
            # Final step to clean data (sigma = 0): first order, x_t = x0.
            coefs[i] = alpha_s, sigma_s, 0.0, 1.0, 0.0
            continue
        if i == 0:
            coefs[i] = _dpm_first_order(acp, s, ts[i + 1])
            continue
        a_t = acp[ts[i + 1]]
        alpha_t, sigma_t = np.sqrt(a_t), np.sqrt(1 - a_t)
        h = _lam(a_t) - _lam(a_s)
        phi = np.expm1(-h)  # e^{-h} - 1
        c_x = sigma_t / sigma_s
        h_prev = _lam(a_s) - _lam(acp[ts[i - 1]])
        r0 = h_prev / h
        # D0 = x0, D1 = (x0 - x0_prev) / r0; x_t = c_x·x − α_t·φ·D0 − ½·α_t·φ·D1 (midpoint form).
        coefs[i] = alpha_s, sigma_s, c_x, -alpha_t * phi * (1 + 0.5 / r0), alpha_t * phi * 0.5 / r0
    return SamplerPlan(sampler, ts, coefs)


def step(coefs: np.ndarray, x: np.ndarray, eps: np.ndarray, prev_x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one step's coefficients in NumPy (the graph does the same on device)."""
    alpha_s, sigma_s, c_x, c_x0, c_prev = coefs
    x0 = (x - sigma_s * eps) / alpha_s
    return c_x * x + c_x0 * x0 + c_prev * prev_x0, x0


def initial_noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Deterministic initial latent noise: PCG64(seed), standard normal, float32."""
    return np.random.Generator(np.random.PCG64(seed)).standard_normal(shape, dtype=np.float32)
