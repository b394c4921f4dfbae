"""Denoiser strategies: how a batch's denoising loop runs on a backend, chosen once per engine.

Every strategy is called the same way, ``denoiser(plan, latent, conditions, known=None) -> latent``,
and runs clips longer than a window (and loops) with ``denoiser.windowed(plan, latent, conditions,
windows, …)``. ``known`` (inpainting, continuation: frames kept from a start clip, re-imposed after
every step) runs the host loop on every backend: the kept frames change on the host each step. A
strategy reads the runner from the engine's ``runners`` mapping at each call, so a runner swapped in
there (timed, recorded) is the one that runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import numpy as np

from .known_regions import KnownLatent
from .loop import denoise_device, denoise_host
from .sampler import SamplerPlan
from .window_plans import WindowPlan
from .windowed_loops import WINDOWS_PER_CALL, denoise_windowed

log = logging.getLogger(__name__)


class Denoiser(Protocol):
    @property
    def runner(self): ...

    def __call__(
        self,
        plan: SamplerPlan,
        latent: np.ndarray,
        conditions: dict[str, np.ndarray],
        known: KnownLatent | None = None,
    ) -> np.ndarray: ...

    def windowed(
        self,
        plan: SamplerPlan,
        latent: np.ndarray,
        conditions: dict[str, np.ndarray],
        windows: WindowPlan,
        per_call: int = WINDOWS_PER_CALL,
        on_step: Callable[[int, int], None] | None = None,
        known: KnownLatent | None = None,
        per_window: bool = False,
    ) -> np.ndarray: ...


class _OnRunners:
    def __init__(self, runners: dict) -> None:
        self.runners = runners

    @property
    def runner(self):
        return self.runners["denoiser"]

    def windowed(
        self, plan, latent, conditions, windows, per_call=WINDOWS_PER_CALL, on_step=None, known=None, per_window=False
    ):
        # Window by window on the host for every backend so far: one graph call per group of
        # windows is the unit of work (device-resident windowed loops are a strategy to add).
        return denoise_windowed(self.runner, plan, latent, conditions, windows, per_call, on_step, known, per_window)


class HostLoop(_OnRunners):
    """NumPy arrays in host memory between steps (CPU backends, where host memory is the device)."""

    def __call__(self, plan, latent, conditions, known=None):
        return denoise_host(self.runner, plan, latent, conditions, known)


class BoundLoop(_OnRunners):
    """onnxruntime IO binding: latents and conditions stay in device memory across steps."""

    def __init__(self, runners: dict, device_id: int, device: str = "cuda") -> None:
        super().__init__(runners)
        self.device_id, self.device = device_id, device

    def __call__(self, plan, latent, conditions, known=None):
        if known is not None:
            return denoise_host(self.runner, plan, latent, conditions, known)
        return denoise_device(self.runner, plan, latent, conditions, self.device_id, self.device)


class PlanLoop(_OnRunners):
    """A native TensorRT plan's own device loop (:meth:`TrtRunner.denoise`)."""

    def __call__(self, plan, latent, conditions, known=None):
        if known is not None:
            return denoise_host(self.runner, plan, latent, conditions, known)
        return self.runner.denoise(plan, latent, conditions)


class GraphLoop:
    """The loop replayed as CUDA graphs; if graphs cannot be captured here, ``fallback`` from then on."""

    def __init__(self, graphs: Callable, fallback: Denoiser) -> None:
        self.graphs: Callable | None = graphs
        self.fallback = fallback

    @property
    def runner(self):
        return self.fallback.runner

    def windowed(self, *args, **kwargs):
        return self.fallback.windowed(*args, **kwargs)

    def __call__(self, plan, latent, conditions, known=None):
        from .cuda_graphs import CudaGraphsUnavailable

        if known is not None:
            return self.fallback(plan, latent, conditions, known)
        if self.graphs is not None:
            try:
                return self.graphs(plan, latent, conditions)
            except CudaGraphsUnavailable as exc:
                log.warning("CUDA graphs unavailable, running without them: %s", exc)
                self.graphs = None
        return self.fallback(plan, latent, conditions)


def choose_denoiser(backend: str, runners: dict, device_id: int = 0, graphs: Callable | None = None) -> Denoiser:
    """The strategy for ``backend``'s ``runners`` (``graphs``: a CUDA-graph replayer to try first)."""
    if backend == "trt-native":
        return PlanLoop(runners)
    loop: Denoiser = BoundLoop(runners, device_id) if backend in ("cuda", "tensorrt") else HostLoop(runners)
    return GraphLoop(graphs, loop) if graphs is not None else loop


class Fp32Retry:
    """The fp32 graphs on the CPU, loaded on first use: one more try for a clip that came out
    non-finite in reduced precision."""

    def __init__(self, make_runners: Callable[[], dict]) -> None:
        self._make_runners = make_runners
        self._runners: dict | None = None

    @property
    def runners(self) -> dict:
        if self._runners is None:
            self._runners = self._make_runners()
        return self._runners

    @property
    def denoiser(self) -> Denoiser:
        return HostLoop(self.runners)
