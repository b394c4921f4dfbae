"""TensorRT plan builds from the stage contracts (fp16, optimisation profiles, timing cache).

Written to TensorRT's documented Python API (``tensorrt`` ≥ 10). TensorRT's
builder cannot be installed on our development machines, so this module has not
run end to end there; everything that needs no library (profiles, naming,
lookup, fallback) is unit-tested.
"""

from __future__ import annotations

import logging
from pathlib import Path

from reaudio.engine.bundle.manifest import read_bundle_manifest
from reaudio.engine.bundle.plans import PLANS, plan_name
from reaudio.models.configs import FamilyConfig

from .contracts import Limits, contract

log = logging.getLogger(__name__)
TIMING_CACHE = "timing.cache"


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message says which and what to install."""


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): TensorRT's builder importable and a CUDA GPU visible."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "the tensorrt package is not installed (pip install 'reaudio[gpu]' on a CUDA machine)"
    if not hasattr(trt, "Builder"):
        return False, "tensorrt is installed without its builder (a lean/runtime-only build)"
    gpu = gpu_name()
    if gpu is None:
        return False, "no CUDA GPU is visible"
    return True, f"TensorRT {trt.__version__} on {gpu}"


def gpu_name(device_id: int = 0) -> str | None:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            return None
    err, props = cudart.cudaGetDeviceProperties(device_id)
    if int(err) != 0:
        return None
    name = props.name
    return name.decode().rstrip("\x00") if isinstance(name, bytes) else str(name)


def build_plan(
    onnx_path: Path,
    plan_path: Path,
    profile: dict[str, tuple[tuple[int, ...], ...]],
    *,
    fp16: bool = True,
    timing_cache: Path | None = None,
    workspace_gib: float = 8.0,
) -> Path:
    """Parse ``onnx_path``, build a serialized engine with one optimisation profile, save it."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"{onnx_path}: TensorRT could not parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"{onnx_path}: TensorRT failed to build an engine (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan_path.with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(plan_path)
    if timing_cache:
        timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    log.info("built %s", plan_path)
    return plan_path


def build_bundle_plans(
    bundle: str | Path, cfg: FamilyConfig, limits: Limits | None = None, stages: tuple[str, ...] | None = None
) -> list[Path]:
    """Build fp16 plans for a bundle's stages into ``bundle/plans/`` (named by TensorRT version and GPU)."""
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(f"cannot build TensorRT plans: {reason}")
    import tensorrt as trt

    bundle = Path(bundle)
    manifest = read_bundle_manifest(bundle)
    limits = limits or Limits()
    gpu = gpu_name() or "unknown-gpu"
    built = []
    for stage in stages or ("text_encoder", "denoiser", "decoder"):
        spec = manifest.stages[stage]
        profile = contract(stage, cfg).trt_profile(cfg, limits)
        plan = bundle / PLANS / plan_name(stage, "fp16", trt.__version__, gpu)
        built.append(build_plan(bundle / spec.file, plan, profile, timing_cache=bundle / PLANS / TIMING_CACHE))
    return built
