"""Diffusion math in torch for training, and textbook samplers to check the engine's."""

from __future__ import annotations

import torch

from reaudio.engine.denoising.schedule import NoiseScheduleConfig


class Diffusion:
    """The forward process q(z_t | z_0) of a schedule, on a device."""

    def __init__(self, schedule: NoiseScheduleConfig, device: torch.device | str = "cpu") -> None:
        self.schedule = schedule
        self.alphas_cumprod = torch.tensor(schedule.alphas_cumprod(), dtype=torch.float64, device=device)

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t].to(z0.dtype).view(-1, *([1] * (z0.dim() - 1)))
        return a.sqrt() * z0 + (1 - a).sqrt() * noise

    def target(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to output: the noise, or v = α·noise − σ·z0."""
        if self.schedule.prediction_type == "epsilon":
            return noise
        a = self.alphas_cumprod[t].to(z0.dtype).view(-1, *([1] * (z0.dim() - 1)))
        return a.sqrt() * noise - (1 - a).sqrt() * z0

    def loss_weights(self, t: torch.Tensor, min_snr_gamma: float = 0.0) -> torch.Tensor:
        """Per-item loss weights of min-SNR-γ (Hang et al., 2023); ones when γ = 0.

        Both objectives are x0-errors in disguise (ε-MSE = SNR·x0-MSE, v-MSE = (SNR+1)·x0-MSE),
        so weighting x0 by min(SNR, γ) divides by SNR for ε and by SNR+1 for v.
        """
        if min_snr_gamma <= 0:
            return torch.ones(len(t), device=t.device)
        a = self.alphas_cumprod[t]
        snr = a / (1 - a)
        denominator = snr if self.schedule.prediction_type == "epsilon" else snr + 1
        return (snr.clamp(max=min_snr_gamma) / denominator).float()

    def to_epsilon(self, x: torch.Tensor, output: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
        """The noise estimate behind a denoiser output at a step with √ā = alpha, √(1−ā) = sigma."""
        return output if self.schedule.prediction_type == "epsilon" else sigma * x + alpha * output


def ddim_step_reference(x, eps, a_t, a_prev):
    """DDIM, η = 0 (Song et al., 2021, eq. 12): x_prev = √ā_prev·x̂0 + √(1−ā_prev)·ε."""
    x0 = (x - (1 - a_t) ** 0.5 * eps) / a_t**0.5
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def dpmpp_2m_step_reference(x, x0, x0_prev, a_s, a_t, a_prev_step):
    """DPM-Solver++(2M) (Lu et al., 2022, Alg. 2) with the midpoint D1, in its own variables."""
    lam = lambda a: 0.5 * torch.log(torch.as_tensor(a / (1 - a), dtype=torch.float64))  # noqa: E731
    alpha_t, sigma_t, sigma_s = a_t**0.5, (1 - a_t) ** 0.5, (1 - a_s) ** 0.5
    h = lam(a_t) - lam(a_s)
    if x0_prev is None:
        return sigma_t / sigma_s * x - alpha_t * torch.expm1(-h) * x0
    r = (lam(a_s) - lam(a_prev_step)) / h
    d1 = (x0 - x0_prev) / r
    return sigma_t / sigma_s * x - alpha_t * torch.expm1(-h) * x0 - 0.5 * alpha_t * torch.expm1(-h) * d1
