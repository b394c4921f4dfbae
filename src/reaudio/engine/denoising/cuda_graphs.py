"""The denoising loop replayed as CUDA graphs (onnxruntime CUDA provider, one session per shape).

A CUDA graph fixes every buffer address, so the loop cannot swap latent buffers
between steps. Instead two graphs are captured per shape — step A reads buffer
pair 0 and writes pair 1, step B the reverse — and alternated; per-step inputs
(timestep, coefficients) are written into their fixed device buffers with
``OrtValue.update_inplace``. Uses onnxruntime's CUDA-graph API
(``enable_cuda_graph``, ``gpu_graph_id``); measured on an H200 in
benchmarks/RESULTS.md. ``device`` "cpu" runs the same buffer schedule on the
CPU provider without graphs, so the tests can check it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .loop import step_feeds
from .sampler import SamplerPlan


class CudaGraphsUnavailable(RuntimeError):
    """onnxruntime cannot capture this graph (some nodes would run outside the CUDA provider)."""


def fixed_dims(input_shapes: dict[str, list], arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Sizes of the graph's named (dynamic) axes, read off the arrays that will be bound."""
    dims: dict[str, int] = {}
    for name, array in arrays.items():
        for axis, size in zip(input_shapes.get(name, ()), np.shape(array)):
            if isinstance(axis, str):
                dims[axis] = int(size)
    return dims


class CudaGraphDenoiser:
    """One session per input shape, its dynamic axes fixed.

    Fixing the axes (``add_free_dimension_override_by_name``) lets onnxruntime fold
    the shape arithmetic that it would otherwise place on the CPU provider; a graph
    with any node outside the CUDA provider cannot be captured. Each session holds
    its own copy of the weights on the GPU, so only the ``max_shapes`` most recently
    used shapes are kept.
    """

    def __init__(
        self,
        model_path: str,
        device_id: int,
        input_dtypes: dict[str, np.dtype],
        device: str = "cuda",
        input_shapes: dict[str, list] | None = None,
        max_shapes: int = 4,
    ) -> None:
        self.model_path = model_path
        self.device_id = device_id
        self.device = device
        self.input_dtypes = input_dtypes
        self.input_shapes = input_shapes or {}
        self.max_shapes = max_shapes
        self._states: OrderedDict[tuple, dict] = OrderedDict()

    def _state(self, latent: np.ndarray, conditions: dict[str, np.ndarray]) -> dict:
        key = (latent.shape, *sorted((k, v.shape) for k, v in conditions.items()))
        if key in self._states:
            self._states.move_to_end(key)
            return self._states[key]
        while len(self._states) >= self.max_shapes:
            self._states.popitem(last=False)
        import onnxruntime as ort

        if self.device == "cuda":
            providers = [("CUDAExecutionProvider", {"device_id": self.device_id, "enable_cuda_graph": "1"})]
        else:
            providers = ["CPUExecutionProvider"]
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        per_step_example = step_feeds(SamplerPlan("ddim", np.ones(1, np.int64), np.ones((1, 5))), 0, latent.shape[0])
        arrays = {"latent": latent, "prev_x0": latent, **conditions, **per_step_example}
        for axis, size in fixed_dims(self.input_shapes, arrays).items():
            opts.add_free_dimension_override_by_name(axis, size)
        try:
            session = ort.InferenceSession(self.model_path, opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail type for a refused capture
            raise CudaGraphsUnavailable(f"{self.model_path}: {exc}") from exc

        host_arrays = []  # on the CPU provider an OrtValue borrows the array's memory: keep it alive

        def buffer(array: np.ndarray):
            host_arrays.append(np.array(array, order="C"))  # a copy: buffers must not share memory
            return ort.OrtValue.ortvalue_from_numpy(host_arrays[-1], self.device, self.device_id)

        zeros = np.zeros_like(latent, dtype=np.float32)
        latents, x0s = [buffer(zeros), buffer(zeros)], [buffer(zeros), buffer(zeros)]
        fixed = {k: buffer(np.asarray(v, dtype=self.input_dtypes[k])) for k, v in conditions.items()}
        per_step = {k: buffer(v) for k, v in per_step_example.items()}
        bindings, options = [], []
        for i in range(2):
            binding = session.io_binding()
            for name, value in {**fixed, **per_step}.items():
                binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_input("latent", latents[i])
            binding.bind_ortvalue_input("prev_x0", x0s[i])
            binding.bind_ortvalue_output("next_latent", latents[1 - i])
            binding.bind_ortvalue_output("x0", x0s[1 - i])
            run = ort.RunOptions()
            run.add_run_config_entry("gpu_graph_id", str(i + 1))
            bindings.append(binding)
            options.append(run)
        state = {
            "session": session,
            "latents": latents,
            "x0s": x0s,
            "fixed": fixed,
            "per_step": per_step,
            "bindings": bindings,
            "options": options,
            "host_arrays": host_arrays,
        }
        self._states[key] = state
        return state

    def __call__(self, plan: SamplerPlan, latent: np.ndarray, conditions: dict[str, np.ndarray]) -> np.ndarray:
        s = self._state(latent, conditions)
        s["latents"][0].update_inplace(np.ascontiguousarray(latent, dtype=np.float32))
        s["x0s"][0].update_inplace(np.zeros_like(latent, dtype=np.float32))
        for name, value in conditions.items():
            s["fixed"][name].update_inplace(np.ascontiguousarray(value, dtype=self.input_dtypes[name]))
        for i in range(len(plan)):
            for name, value in step_feeds(plan, i, latent.shape[0]).items():
                s["per_step"][name].update_inplace(value)
            s["session"].run_with_iobinding(s["bindings"][i % 2], s["options"][i % 2])
        return s["latents"][len(plan) % 2].numpy()
