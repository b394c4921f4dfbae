"""The OpenVINO backend: a bundle's ONNX graphs run by the OpenVINO runtime on the CPU.

OpenVINO reads the same ONNX files as onnxruntime (no conversion step, nothing written into the
bundle) and can run them with bf16 arithmetic where the CPU has it (AMX or AVX-512 BF16): precision
``bf16`` is the fp32 graph with OpenVINO's inference-precision hint, not another graph. Compiled
models are cached under the cache root, keyed by the bundle's manifest.

A decoder in bf16 is run in two parts: the learned networks (VAE decoder, calibration, vocoder) in
bf16, the signal processing after the vocoder (mel matching's STFT passes, the band extension) in f32.
bf16 rounding in those eight analysis/synthesis passes cost more log-mel accuracy than the networks
before them (docs/speed.md), and the per-node markings OpenVINO offers for keeping nodes in f32 are
not honoured by its CPU plugin, so the graph is cut where the vocoder's audio leaves it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from ..bundle.manifest import StageSpec
from .runners import BackendUnavailable

#: OpenVINO's inference-precision hint per engine precision: the graph's own int8 layers run in int8
#: under either hint; the hint is the arithmetic of everything else.
PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16", "int8-bf16": "bf16"}
#: Node-name prefixes (the exporter's module names) of the decoder's signal processing after the
#: vocoder, and of the stages that feed it.
PRECISE_TAIL = ("/mel_matching/", "/band_extension/")
TAIL_FEEDERS = ("/vocoder/", "/calibration/", "/decoder/")


def split_precise_tail(model):
    """``model`` (an ``openvino.Model``, changed in place) as (head, tail): the head computes the tensors
    the tail's first nodes read from the stages before it, the tail the model's outputs from those; None
    when the graph has no such tail (any stage but a decoder with mel matching or a band extension)."""
    import openvino as ov
    from openvino import opset13

    cut = []
    for op in model.get_ordered_ops():
        if not op.get_friendly_name().startswith(PRECISE_TAIL):
            continue
        for port in op.inputs():
            source = port.get_source_output()
            node = source.get_node()
            if node.get_friendly_name().startswith(TAIL_FEEDERS) and node.get_type_name() != "Constant":
                if source not in cut:
                    cut.append(source)
    if not cut:
        return None
    head_nodes, stack = set(), [source.get_node() for source in cut]
    while stack:  # everything the cut tensors are computed from stays in the head
        node = stack.pop()
        if node.get_friendly_name() not in head_nodes:
            head_nodes.add(node.get_friendly_name())
            stack += [port.get_source_output().get_node() for port in node.inputs()]
    inputs = []
    for n, source in enumerate(cut):
        parameter = opset13.parameter(source.get_partial_shape(), source.get_element_type(), name=f"tail_input_{n}")
        for port in list(source.get_target_inputs()):
            if port.get_node().get_friendly_name() not in head_nodes:
                port.replace_source_output(parameter.output(0))
        inputs.append(parameter)
    tail = ov.Model(model.get_results(), inputs, "precise_tail")
    return ov.Model(cut, model.get_parameters(), "head"), tail


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
        """``precision``: the engine's name for what runs ("fp32", "bf16", "int8" or "int8-bf16");
        ``path`` is already the graph it names (the int8 one for the int8 precisions)."""
        self.spec = spec
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision]}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        decoder = any(o.name == "waveform" for o in spec.outputs)
        in_bf16 = config["INFERENCE_PRECISION_HINT"] == "bf16"
        parts = split_precise_tail(core.read_model(str(path))) if in_bf16 and decoder else None
        #: the f32 part after the vocoder, when the graph was cut (a bf16 decoder with such a tail)
        self.tail = None
        if parts is None:
            self.compiled = core.compile_model(str(path), "CPU", config)
        else:
            self.compiled = core.compile_model(parts[0], "CPU", config)
            self.tail = core.compile_model(parts[1], "CPU", {**config, "INFERENCE_PRECISION_HINT": "f32"})
        last = self.tail or self.compiled
        self.outputs = [last.output(o.name) for o in spec.outputs]
        self.input_dtypes = {i.name: np.dtype("bool" if i.dtype == "bool" else i.dtype) for i in spec.inputs}
        self._local = threading.local()

    def _request(self, compiled, key: str):
        request = getattr(self._local, key, None)
        if request is None:
            request = compiled.create_infer_request()
            setattr(self._local, key, request)
        return request

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=self.input_dtypes[k]) for k, v in feeds.items()}
        result = self._request(self.compiled, "request").infer(feeds)
        if self.tail is not None:
            middle = [result[o] for o in self.compiled.outputs]
            result = self._request(self.tail, "tail_request").infer(middle)
        return [np.array(result[o], copy=True) for o in self.outputs]
