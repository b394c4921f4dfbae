"""TensorRT code paths that need no TensorRT: naming, lookup, fallback messages."""

import importlib.util
import subprocess
import sys

import pytest

from reaudio.engine.bundle.plans import find_plan, plan_name
from reaudio.export.tensorrt import TensorRTUnavailable, build_bundle_plans, tensorrt_status
from reaudio.models.configs import load_config

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def test_plan_names_carry_version_and_gpu():
    name = plan_name("denoiser", "fp16", "10.8.0", "NVIDIA H100 80GB HBM3")
    assert name == "denoiser.fp16.trt10.8.0.nvidia-h100-80gb-hbm3.plan"


def test_plan_for_another_gpu_or_version_is_not_used(tmp_path):
    plans = tmp_path / "plans"
    plans.mkdir()
    (plans / plan_name("denoiser", "fp16", "10.7.0", "NVIDIA A100")).write_bytes(b"x")
    found = find_plan(tmp_path, "denoiser", "fp16", "10.8.0", "NVIDIA H100")
    assert found.path is None
    assert "other versions/GPUs" in found.message and "10.7.0" in found.message
    (plans / plan_name("denoiser", "fp16", "10.8.0", "NVIDIA H100")).write_bytes(b"y")
    assert find_plan(tmp_path, "denoiser", "fp16", "10.8.0", "NVIDIA H100").path is not None
    assert "build one" in find_plan(tmp_path, "decoder", "fp16", "10.8.0", "NVIDIA H100").message


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_plans_are_skipped_with_a_reason(tiny_bundle):
    ok, reason = tensorrt_status()
    assert not ok and "tensorrt" in reason
    with pytest.raises(TensorRTUnavailable, match="cannot build TensorRT plans"):
        build_bundle_plans(tiny_bundle, load_config(tiny_bundle / "family.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "reaudio", "plans", "build", str(tiny_bundle)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 3 and "skipped TensorRT plans" in proc.stderr


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT and a CUDA GPU")
def test_build_plans_on_a_gpu(tiny_bundle):
    ok, reason = tensorrt_status()
    if not ok:
        pytest.skip(reason)
    plans = build_bundle_plans(tiny_bundle, load_config(tiny_bundle / "family.json"))
    assert all(p.is_file() and p.stat().st_size > 0 for p in plans)
