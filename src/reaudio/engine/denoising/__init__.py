"""Denoising: the noise schedule, sampler coefficients, and the loops that run the denoiser graph."""
