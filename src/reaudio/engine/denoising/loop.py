"""The denoising loop: one ``denoiser`` graph call per step, coefficients from the sampler plan."""

from __future__ import annotations

import numpy as np

from .known_regions import KnownLatent, levels_after_steps
from .sampler import SamplerPlan


def step_feeds(plan: SamplerPlan, i: int, batch: int) -> dict[str, np.ndarray]:
    return {
        "timestep": np.full(batch, plan.timesteps[i], dtype=np.int64),
        "coefs": np.ascontiguousarray(np.broadcast_to(plan.coefs[i].astype(np.float32), (batch, 5))),
    }


def denoise_host(
    runner,
    plan: SamplerPlan,
    latent: np.ndarray,
    conditions: dict[str, np.ndarray],
    known: KnownLatent | None = None,
) -> np.ndarray:
    """Loop with NumPy arrays (CPU backends: host memory is the device); with ``known``, only the
    frames it does not keep are denoised (inpainting, continuation)."""
    prev_x0 = np.zeros_like(latent)
    levels = levels_after_steps(plan) if known is not None else None
    for i in range(len(plan)):
        feeds = {"latent": latent, "prev_x0": prev_x0, **conditions, **step_feeds(plan, i, len(latent))}
        latent, prev_x0 = runner.run(feeds)
        if known is not None:
            latent = known.impose(latent, *levels[i])
    return latent


def denoise_device(
    runner,
    plan: SamplerPlan,
    latent: np.ndarray,
    conditions: dict[str, np.ndarray],
    device_id: int,
    device: str = "cuda",
) -> np.ndarray:
    """Loop with onnxruntime IO binding: latents and conditions stay in GPU memory across steps.

    Only the per-step timestep and coefficients (a few bytes) cross from the host;
    the two latent buffers are swapped, never copied. ``device`` "cpu" runs the
    same binding logic on the CPU provider (how the tests check it without a GPU).
    """
    import onnxruntime as ort

    session = runner.session

    host_arrays = []  # on the CPU provider an OrtValue borrows the array's memory: keep it alive

    def on_device(array: np.ndarray):
        host_arrays.append(np.array(array, order="C"))  # a copy: buffers must not share memory
        return ort.OrtValue.ortvalue_from_numpy(host_arrays[-1], device, device_id)

    dtypes = runner.input_dtypes
    latent = latent.astype(np.float32)
    x, x_next = on_device(latent), on_device(np.empty_like(latent))
    prev, x0 = on_device(np.zeros_like(latent)), on_device(np.empty_like(latent))
    fixed = {name: on_device(np.asarray(v, dtype=dtypes[name])) for name, v in conditions.items()}
    binding = session.io_binding()
    for name, value in fixed.items():
        binding.bind_ortvalue_input(name, value)
    for i in range(len(plan)):
        per_step = step_feeds(plan, i, latent.shape[0])  # bound by reference: must outlive the run
        for name, value in per_step.items():
            binding.bind_cpu_input(name, value)
        binding.bind_ortvalue_input("latent", x)
        binding.bind_ortvalue_input("prev_x0", prev)
        binding.bind_ortvalue_output("next_latent", x_next)
        binding.bind_ortvalue_output("x0", x0)
        session.run_with_iobinding(binding)
        x, x_next = x_next, x
        prev, x0 = x0, prev
    return np.array(x.numpy())  # a copy: on the CPU provider x borrows memory freed on return
