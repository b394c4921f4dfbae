"""Native TensorRT runners: serialized plans, device buffers from cuda-python, one shared scratch.

Written to TensorRT 10's documented Python runtime API (``tensorrt`` /
``tensorrt-lean``) and cuda-python's runtime bindings. No TensorRT runtime and
GPU were available where this was written, so it has not run; the plan lookup
and fallback messages it relies on are unit-tested (``reaudio.engine.bundle.plans``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..bundle.manifest import BundleManifest, StageSpec
from ..bundle.plans import find_plan
from .runners import BackendUnavailable

log = logging.getLogger(__name__)


def _cudart():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


def _check(result):
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return rest[0] if len(rest) == 1 else rest


class SharedScratch:
    """One device allocation serving every execution context (stages run one at a time)."""

    def __init__(self) -> None:
        self.ptr = 0
        self.size = 0

    def ensure(self, size: int) -> int:
        if size > self.size:
            cudart = _cudart()
            if self.ptr:
                _check(cudart.cudaFree(self.ptr))
            self.ptr = int(_check(cudart.cudaMalloc(size)))
            self.size = size
        return self.ptr


class TrtRunner:
    """One stage's plan: ``run(feeds) -> outputs`` with NumPy in and out, like ``OrtRunner``."""

    def __init__(self, plan: Path, spec: StageSpec, scratch: SharedScratch, stream) -> None:
        import tensorrt as trt

        self.spec = spec
        self.stream = stream
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{plan}: TensorRT could not deserialize the plan; rebuild it")
        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        self.context = self.engine.create_execution_context(strategy)
        self.scratch = scratch
        self.output_names = [o.name for o in spec.outputs]
        self.input_dtypes = {i.name: np.dtype("bool" if i.dtype == "bool" else i.dtype) for i in spec.inputs}
        self._buffers: dict[str, tuple[int, int]] = {}  # name → (pointer, bytes)

    def device_buffer(self, name: str, nbytes: int) -> int:
        ptr, size = self._buffers.get(name, (0, 0))
        if nbytes > size:
            cudart = _cudart()
            if ptr:
                _check(cudart.cudaFree(ptr))
            ptr = int(_check(cudart.cudaMalloc(max(nbytes, 1))))
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        cudart = _cudart()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, value in feeds.items():
            array = np.ascontiguousarray(value, dtype=self.input_dtypes[name])
            ptr = self.device_buffer(name, array.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, self.stream))
            self.context.set_input_shape(name, array.shape)
            self.context.set_tensor_address(name, ptr)
        outputs = []
        for name in self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            out = np.empty(shape, dtype=np.float32)
            outputs.append(out)
            self.context.set_tensor_address(name, self.device_buffer(name, out.nbytes))
        self.context.device_memory = self.scratch.ensure(self.engine.device_memory_size_v2)
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError(f"TensorRT execution failed for {self.spec.file}")
        for name, out in zip(self.output_names, outputs):
            _check(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, self.device_buffer(name, out.nbytes), out.nbytes, d2h, self.stream
                )
            )
        _check(cudart.cudaStreamSynchronize(self.stream))
        return outputs

    def denoise(self, plan, latent: np.ndarray, conditions: dict[str, np.ndarray]) -> np.ndarray:
        """The denoising loop with latents kept in device memory: two latent/x0 buffer pairs swap roles."""
        from ..denoising.loop import step_feeds

        cudart = _cudart()
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        ctx, stream = self.context, self.stream
        latent = np.ascontiguousarray(latent, dtype=np.float32)
        nbytes = latent.nbytes
        x, x_next = self.device_buffer("latent", nbytes), self.device_buffer("next_latent", nbytes)
        prev, x0 = self.device_buffer("prev_x0", nbytes), self.device_buffer("x0", nbytes)
        _check(cudart.cudaMemcpyAsync(x, latent.ctypes.data, nbytes, h2d, stream))
        _check(cudart.cudaMemsetAsync(prev, 0, nbytes, stream))
        fixed = {**conditions, **step_feeds(plan, 0, len(latent))}
        for name, value in fixed.items():  # conditions once; timestep/coefs are rewritten per step below
            array = np.ascontiguousarray(value, dtype=self.input_dtypes[name])
            ptr = self.device_buffer(name, array.nbytes)
            _check(cudart.cudaMemcpyAsync(ptr, array.ctypes.data, array.nbytes, h2d, stream))
            ctx.set_input_shape(name, array.shape)
            ctx.set_tensor_address(name, ptr)
        ctx.set_input_shape("latent", latent.shape)
        ctx.set_input_shape("prev_x0", latent.shape)
        ctx.device_memory = self.scratch.ensure(self.engine.device_memory_size_v2)
        for i in range(len(plan)):
            for name, value in step_feeds(plan, i, len(latent)).items():
                array = np.ascontiguousarray(value, dtype=self.input_dtypes[name])
                _check(
                    cudart.cudaMemcpyAsync(
                        self.device_buffer(name, array.nbytes), array.ctypes.data, array.nbytes, h2d, stream
                    )
                )
            ctx.set_tensor_address("latent", x)
            ctx.set_tensor_address("prev_x0", prev)
            ctx.set_tensor_address("next_latent", x_next)
            ctx.set_tensor_address("x0", x0)
            if not ctx.execute_async_v3(stream):
                raise RuntimeError("TensorRT execution failed in the denoising loop")
            x, x_next = x_next, x
            prev, x0 = x0, prev
        out = np.empty_like(latent)
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, x, nbytes, d2h, stream))
        _check(cudart.cudaStreamSynchronize(stream))
        return out


def make_trt_runners(bundle: Path, manifest: BundleManifest, device_id: int = 0) -> dict[str, TrtRunner]:
    """Runners for every stage that has a plan for this GPU and TensorRT version.

    Stages without a matching plan raise ``BackendUnavailable`` naming what exists and
    how to build one (``reaudio plans build``); ``backend="auto"`` then picks another backend.
    """
    import tensorrt as trt

    cudart = _cudart()
    _check(cudart.cudaSetDevice(device_id))
    props = _check(cudart.cudaGetDeviceProperties(device_id))
    gpu = props.name.decode().rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    stream = _check(cudart.cudaStreamCreate())
    scratch = SharedScratch()
    runners = {}
    for name, spec in manifest.stages.items():
        found = find_plan(bundle, name, "fp16", trt.__version__, gpu)
        if found.path is None:
            if name == "audio_encoder":
                continue  # only `db add` needs it; it runs on onnxruntime
            raise BackendUnavailable(found.message)
        log.info("stage %s: %s", name, found.message)
        runners[name] = TrtRunner(found.path, spec, scratch, stream)
    return runners
