"""The diffusion noise schedule (AudioLDM's), in NumPy so the engine and training share it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_SCHEDULES = ("scaled_linear", "linear")
_PREDICTIONS = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class NoiseScheduleConfig:
    """Forward-process schedule.

    Attributes:
        num_train_timesteps: number of discrete training timesteps.
        beta_start, beta_end: the first and last beta.
        beta_schedule: "scaled_linear" (linear in sqrt(beta), AudioLDM/LDM) or "linear".
        prediction_type: what the denoiser predicts: "epsilon" (the noise) or "v_prediction"
            (v = alpha·noise − sigma·z0, Salimans & Ho, 2022; diffusers' names). The exported
            denoiser graph turns either into the noise, so the sampler is the same for both.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps={self.num_train_timesteps} must be >= 2")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {self.beta_start}, {self.beta_end}")
        if self.beta_schedule not in _SCHEDULES:
            raise ValueError(f"beta_schedule={self.beta_schedule!r}; valid: {', '.join(_SCHEDULES)}")
        if self.prediction_type not in _PREDICTIONS:
            raise ValueError(f"prediction_type={self.prediction_type!r}; valid: {', '.join(_PREDICTIONS)}")

    def betas(self) -> np.ndarray:
        n = self.num_train_timesteps
        if self.beta_schedule == "scaled_linear":
            return np.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=np.float64) ** 2
        return np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)

    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas())
