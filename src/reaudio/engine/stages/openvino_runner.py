"""The OpenVINO backend: a bundle's ONNX graphs run by the OpenVINO runtime on the CPU.

OpenVINO reads the same ONNX files as onnxruntime (no conversion step, nothing written into the
bundle) and can run them with bf16 arithmetic where the CPU has it (AMX or AVX-512 BF16): precision
``bf16`` is the fp32 graph with OpenVINO's inference-precision hint, not another graph. Compiled
models are cached under the cache root, keyed by the bundle's manifest.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..bundle.manifest import StageSpec
from .runners import BackendUnavailable

#: OpenVINO's inference-precision hint per engine precision.
PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


def openvino_core(cache_dir: Path | None):
    try:
        import openvino as ov
    except ImportError as exc:
        raise BackendUnavailable(
            "backend 'openvino' needs the OpenVINO runtime: pip install 'reaudio[openvino]'"
        ) from exc
    core = ov.Core()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache_dir)})
    return core


class OpenVinoRunner:
    """One stage compiled by OpenVINO for the CPU. Infer requests are per thread (one is not
    thread-safe); outputs are copied out of the request's buffers, which the next call reuses."""

    def __init__(self, core, path: Path, spec: StageSpec, precision: str, threads: int | None) -> None:
        self.spec = spec
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(str(path), "CPU", config)
        self.outputs = [self.compiled.output(o.name) for o in spec.outputs]
        self.input_dtypes = {i.name: np.dtype("bool" if i.dtype == "bool" else i.dtype) for i in spec.inputs}
        self._local = threading.local()

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        feeds = {k: np.ascontiguousarray(v, dtype=self.input_dtypes[k]) for k, v in feeds.items()}
        result = request.infer(feeds)
        return [np.array(result[o], copy=True) for o in self.outputs]
