"""Execution backends: onnxruntime (CPU, CUDA, TensorRT EP), OpenVINO (CPU) and native TensorRT plans.

A backend turns a bundle's stage graphs into runners (:class:`~.runners.Runner`:
``run(feeds) -> outputs``, NumPy in and out); :func:`open_backend` is the one place
that decides which backend a bundle runs on.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..bundle.manifest import TUNABLE_PRECISIONS, TUNING_REPORT, BundleManifest, StageSpec
from .runners import BackendUnavailable

log = logging.getLogger(__name__)
BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "trt-native", "openvino")


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


#: A one-node ONNX model (Relu on a float[1]), serialised: enough to see whether a provider starts.
_PROBE_MODEL = (
    b'\x08\x08\x12\x00:7\n\x0c\n\x01x\x12\x01y"\x04Relu\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04'
    b"\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r"
)


def provider_initialises(provider: str) -> bool:
    """True when an onnxruntime session actually runs on ``provider``. Listed is not enough: the
    TensorRT provider is listed by every onnxruntime-gpu build and falls back to CPU without its libraries."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    try:
        session = ort.InferenceSession(_PROBE_MODEL, opts, providers=[provider, "CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any failure to start means "not usable"
        log.info("%s does not start: %s", provider, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return False
    return session.get_providers()[0] == provider


def resolve_backend(name: str, bundle: Path) -> str:
    """Pick a concrete backend for ``name`` ("auto" → the best available) and check it can run."""
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r}; valid: {', '.join(BACKENDS)}")
    providers = available_providers()
    if name == "auto":
        if "TensorrtExecutionProvider" in providers and provider_initialises("TensorrtExecutionProvider"):
            choice = "tensorrt"
        elif "CUDAExecutionProvider" in providers:
            choice = "cuda"
        else:
            choice = "openvino" if _openvino_measured_faster(bundle) else "cpu"
        log.info("backend auto → %s (onnxruntime providers: %s)", choice, ", ".join(providers))
        return choice
    if name == "cuda" and "CUDAExecutionProvider" not in providers:
        raise BackendUnavailable(
            "backend 'cuda' needs onnxruntime-gpu with a CUDA GPU (pip install 'reaudio[gpu]'); "
            f"available providers: {', '.join(providers)}"
        )
    if name == "tensorrt" and "TensorrtExecutionProvider" not in providers:
        raise BackendUnavailable(
            "backend 'tensorrt' needs onnxruntime-gpu built with TensorRT and the TensorRT libraries; "
            f"available providers: {', '.join(providers)}"
        )
    if name == "trt-native":
        try:
            import tensorrt  # noqa: F401
        except ImportError as exc:
            raise BackendUnavailable("backend 'trt-native' needs the tensorrt and cuda-python packages") from exc
    if name == "openvino":
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            raise BackendUnavailable("backend 'openvino' needs the OpenVINO runtime: pip install 'reaudio[openvino]'")
    return name


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it (the platform's word elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


#: The instruction sets that decide which precision pays on a CPU: bf16 and int8 matrix units (AMX),
#: their vector forms (AVX-512 BF16 / VNNI) and the baseline they replace.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """Which of :data:`SPEED_FLAGS` this CPU reports (/proc/cpuinfo; empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in SPEED_FLAGS if flag in have]
    except OSError:
        pass
    return []


def _openvino_measured_faster(bundle: Path) -> bool:
    """True when OpenVINO is installed and ``reaudio tune``, run on a CPU of this model, found it
    faster than onnxruntime for ``bundle``: the choice rests on a measurement, never on a guess."""
    import importlib.util
    import json

    if importlib.util.find_spec("openvino") is None:
        return False
    path = Path(bundle) / TUNING_REPORT
    if not path.is_file():
        log.info("OpenVINO is installed; `reaudio tune` measures whether it is faster here for %s", bundle)
        return False
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
        tuned_on, fastest = report["machine"]["cpu"], report["fastest_backend"]
    except (ValueError, KeyError, TypeError):
        log.warning("%s: unreadable; run `reaudio tune` again", path)
        return False
    if tuned_on != cpu_model():
        log.info("%s was tuned on a %s, not this %s: run `reaudio tune` here", bundle, tuned_on, cpu_model())
        return False
    return fastest == "openvino"


def has_native_plans(bundle: Path) -> bool:
    """True when ``bundle/plans`` holds TensorRT plans and the tensorrt package is importable."""
    import importlib.util

    plans = bundle / "plans"
    return plans.is_dir() and any(plans.glob("*.plan")) and importlib.util.find_spec("tensorrt") is not None


def run_errors() -> tuple[type[BaseException], ...]:
    """What a stage raises when it cannot run a batch here (memory, a kernel failing): onnxruntime's
    own exceptions are not ``RuntimeError``, so the pipeline catches these to fail only that batch."""
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
    except ImportError:
        return (RuntimeError, MemoryError)
    return (RuntimeError, MemoryError, ort_state.Fail, ort_state.RuntimeException, ort_state.EPFail)


class OrtRunner:
    """One stage as an onnxruntime session."""

    def __init__(self, path: Path, spec: StageSpec, providers: list, threads: int | None) -> None:
        self.spec = spec
        self.session = self.session_for(path, providers, threads)
        self.output_names = [o.name for o in spec.outputs]
        self.input_dtypes = {i.name: np.dtype("bool" if i.dtype == "bool" else i.dtype) for i in spec.inputs}

    @staticmethod
    def session_for(path: Path, providers: list, threads: int | None):
        """An onnxruntime session with the engine's settings (all graph optimisations, ``threads``)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), opts, providers=providers)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=self.input_dtypes[k]) for k, v in feeds.items()}
        return self.session.run(self.output_names, feeds)


def backend_cache(bundle: Path, kind: str) -> Path:
    """Where a backend keeps what it compiles for ``bundle`` (``kind``: "ort-trt" engines, "openvino"
    blobs): under the cache root, keyed by the bundle's manifest, never inside the bundle (which may
    be read-only or shared)."""
    import hashlib

    from ..bundle.default_model import cache_root
    from ..bundle.manifest import BUNDLE_MANIFEST

    digest = hashlib.sha256((Path(bundle) / BUNDLE_MANIFEST).read_bytes()).hexdigest()[:16]
    return cache_root() / kind / digest


def ort_trt_cache(bundle: Path) -> Path:
    """Where the TensorRT provider keeps its engines for ``bundle``."""
    return backend_cache(bundle, "ort-trt")


def ort_providers(backend: str, device_id: int, bundle: Path) -> list:
    if backend == "cpu":
        return ["CPUExecutionProvider"]
    cuda = ("CUDAExecutionProvider", {"device_id": device_id})
    if backend == "cuda":
        return [cuda, "CPUExecutionProvider"]
    if backend == "tensorrt":
        cache = ort_trt_cache(bundle)
        cache.mkdir(parents=True, exist_ok=True)
        trt = (
            "TensorrtExecutionProvider",
            {
                "device_id": device_id,
                "trt_fp16_enable": True,
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
            },
        )
        return [trt, cuda, "CPUExecutionProvider"]
    raise ValueError(f"no onnxruntime providers for backend {backend!r}")


PRECISIONS = ("auto", "fp32", "fp16", "int8", "bf16", "int8-bf16")
#: Precisions that run a stage's int8 graph: "int8-bf16" is that graph on OpenVINO with bf16
#: arithmetic wherever it is not int8 (the layers the sensitivity pass kept, attention, the vocoder).
INT8_PRECISIONS = ("int8", "int8-bf16")
#: Precisions only the OpenVINO backend runs (onnxruntime has no bf16 arithmetic on the CPU).
OPENVINO_PRECISIONS = ("bf16", "int8-bf16")


def stage_file(spec: StageSpec, backend: str, precision: str) -> str:
    """The graph a stage runs: fp16 on GPU backends under "auto" (or when asked), the fused fp16
    graph in their place on CUDA, int8 when asked (int8-bf16 too); a stage without that variant runs
    its fp32 graph (bf16 too: OpenVINO runs the fp32 graph with bf16 arithmetic)."""
    if precision in INT8_PRECISIONS:
        return spec.int8_file or spec.file
    use_fp16 = precision == "fp16" or (precision == "auto" and backend in ("cuda", "tensorrt"))
    if use_fp16 and backend == "cuda" and spec.fused_file:
        return spec.fused_file
    return spec.fp16_file if use_fp16 and spec.fp16_file else spec.file


def stage_precisions(manifest: BundleManifest, backend: str, precision: str) -> dict[str, str]:
    """Each stage's precision: ``precision`` for every stage, except "auto" on a CPU backend, which
    takes the per-stage choice ``reaudio tune`` recorded in the bundle for that backend (fp32 for
    a stage it did not name, and for every stage of an untuned bundle)."""
    if precision == "auto" and backend in TUNABLE_PRECISIONS:
        tuned = manifest.tuned_precision.get(backend, {})
        return {name: tuned.get(name, "fp32") for name in manifest.stages}
    return dict.fromkeys(manifest.stages, precision)


def runs_as(spec: StageSpec, backend: str, precision: str) -> str:
    """What a stage computes in once its graph is picked (``precision`` as :func:`stage_precisions`
    resolved it): a stage without the asked-for variant runs its fp32 graph, so int8 becomes fp32,
    int8-bf16 bf16 (OpenVINO's arithmetic still applies) and fp16 fp32; a GPU's "auto" is fp16 where
    the stage has fp16 graphs."""
    if backend not in ("cpu", "openvino", "cuda", "tensorrt"):
        return precision  # trt-native builds its own plans from the graphs
    graph = stage_file(spec, backend, precision)
    if precision in INT8_PRECISIONS and graph != spec.int8_file:
        return "bf16" if precision == "int8-bf16" else "fp32"
    if precision in ("auto", "fp16"):
        return "fp32" if graph == spec.file else "fp16"
    return precision


def stages_run_as(manifest: BundleManifest, backend: str, precision: str) -> dict[str, str]:
    """:func:`runs_as` for every stage of ``manifest``: what ``precision`` on ``backend`` computes each in."""
    asked = stage_precisions(manifest, backend, precision)
    return {name: runs_as(spec, backend, asked[name]) for name, spec in manifest.stages.items()}


def check_precision(bundle: Path, manifest: BundleManifest, backend: str, precision: str) -> None:
    """Refuse a precision this bundle or backend cannot give, saying how to get it."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}; valid: {', '.join(PRECISIONS)}")
    if precision in OPENVINO_PRECISIONS and backend != "openvino":
        raise BackendUnavailable(
            f"precision {precision!r} runs on the openvino backend only (asked for {backend!r}); "
            "pass --backend openvino (pip install 'reaudio[openvino]')"
        )
    if precision in INT8_PRECISIONS:
        if backend not in ("cpu", "openvino"):
            raise BackendUnavailable(
                f"precision {precision!r} runs on a CPU backend only, cpu or openvino (asked for {backend!r}); "
                "pass --backend cpu, or use fp16 on a GPU"
            )
        if not any(s.int8_file for s in manifest.stages.values()):
            raise BackendUnavailable(
                f"{bundle}: this bundle has no int8 graphs; add them with "
                f"`reaudio quantize {bundle}` (needs the export extra)"
            )
    if precision == "fp16" and not any(s.fp16_file for s in manifest.stages.values()):
        raise BackendUnavailable(f"{bundle}: this bundle has no fp16 graphs; export it with --fp16")


def make_runners(
    bundle: Path,
    manifest: BundleManifest,
    backend: str,
    device_id: int = 0,
    threads: int | None = None,
    precision: str = "auto",
) -> dict[str, OrtRunner]:
    """A runner per stage; ``precision`` picks each stage's graph (see :func:`stage_file`)."""
    if backend == "trt-native":
        from .trt_native import make_trt_runners

        return make_trt_runners(bundle, manifest, device_id)
    check_precision(bundle, manifest, backend, precision)
    per_stage = stage_precisions(manifest, backend, precision)
    if backend == "openvino":
        from .openvino_runner import OpenVinoRunner, openvino_core

        core = openvino_core(backend_cache(bundle, "openvino"))
        return {
            name: OpenVinoRunner(
                core,
                bundle / stage_file(spec, backend, per_stage[name]),
                spec,
                per_stage[name],
                threads,
            )
            for name, spec in manifest.stages.items()
        }
    providers = ort_providers(backend, device_id, bundle)
    runners = {}
    for name, spec in manifest.stages.items():
        file = stage_file(spec, backend, per_stage[name])
        runners[name] = OrtRunner(bundle / file, spec, providers, threads)
        log.debug("stage %s: %s on %s", name, file, backend)
    return runners


def open_backend(
    bundle: Path,
    manifest: BundleManifest,
    backend: str = "auto",
    device_id: int = 0,
    threads: int | None = None,
    precision: str = "auto",
) -> tuple[str, dict]:
    """The concrete backend for ``backend`` and its runners: under "auto", TensorRT plans built
    for this machine first (they beat the onnxruntime backends), then the best onnxruntime one."""
    chosen = resolve_backend(backend, bundle)
    if backend == "auto" and has_native_plans(bundle):
        try:
            return "trt-native", make_runners(bundle, manifest, "trt-native", device_id, threads, precision)
        except (BackendUnavailable, ImportError) as exc:
            log.warning("not using TensorRT plans: %s; falling back to %s", exc, chosen)
    return chosen, make_runners(bundle, manifest, chosen, device_id, threads, precision)
