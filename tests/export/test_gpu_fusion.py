"""`--optimize gpu`: the fused fp16 denoiser for CUDA, its selection, and parity where it can run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("diffusers")
onnx = pytest.importorskip("onnx")

import onnxruntime as ort  # noqa: E402

from reaudio.engine.bundle.manifest import read_bundle_manifest  # noqa: E402
from reaudio.engine.stages.backends import stage_file  # noqa: E402
from reaudio.export.contracts import contract  # noqa: E402
from reaudio.export.gpu_fusion import fuse_denoiser  # noqa: E402
from reaudio.export.import_audioldm import import_audioldm  # noqa: E402
from reaudio.models.configs import load_config  # noqa: E402
from reaudio.training.toy_audioldm import make  # noqa: E402


@pytest.fixture(scope="module")
def fused_bundle(tmp_path_factory):
    work = tmp_path_factory.mktemp("fused")
    out = work / "bundle"
    import_audioldm(make(work / "audioldm"), out, fp16=True, optimize="gpu")
    return out


def _feeds(bundle, batch=2, frames=24):
    cfg = load_config(bundle / "family.json")
    spec = read_bundle_manifest(bundle).stages["denoiser"]
    args = contract("denoiser", cfg).sample_inputs(cfg, batch=batch, frames=frames)
    return {s.name: a.numpy() for s, a in zip(spec.inputs, args)}


def _ops(path):
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_fused_graph_has_the_cuda_kernels_and_is_picked_on_cuda_only(fused_bundle):
    import json

    spec = read_bundle_manifest(fused_bundle).stages["denoiser"]
    assert spec.fused_file == "denoiser/model.fp16.fused.onnx"
    ops = _ops(fused_bundle / spec.fused_file)
    assert {"MultiHeadAttention", "GroupNorm", "NhwcConv", "BiasSplitGelu"} <= ops
    assert "Softmax" not in ops or "MultiHeadAttention" in ops
    counts = json.loads((fused_bundle / "export_report.json").read_text())["fused_ops"]
    assert counts["MultiHeadAttention"] > 0 and counts["NhwcConv"] > 0
    assert stage_file(spec, "cuda", "auto") == spec.fused_file
    assert stage_file(spec, "cuda", "fp16") == spec.fused_file
    assert stage_file(spec, "tensorrt", "auto") == spec.fp16_file  # TensorRT cannot parse the contrib ops
    assert stage_file(spec, "cpu", "auto") == spec.file
    assert stage_file(spec, "cuda", "fp32") == spec.file


def test_guidance_and_sampler_stay_fp32_in_the_fused_graph(fused_bundle):
    graph = onnx.load(str(fused_bundle / "denoiser/model.fp16.fused.onnx")).graph
    half = {t.name for t in graph.value_info if t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    outside = [
        n
        for n in graph.node
        if n.name.startswith("/")
        and not n.name.startswith("/unet/")
        and n.op_type not in ("Cast", "Constant", "Shape", "Gather", "Unsqueeze", "Concat", "Reshape")
    ]
    assert outside and half  # the UNet's tensors are fp16
    assert not [n.name for n in outside if any(o in half for o in n.output)]


def test_fusions_with_cpu_kernels_match_the_unfused_graph(fused_bundle, tmp_path):
    src = fused_bundle / "denoiser/model.onnx"
    counts = fuse_denoiser(src, tmp_path / "cpu.onnx", fp16=False, cpu_kernels_only=True)
    assert counts.get("Attention", 0) + counts.get("MultiHeadAttention", 0) > 0, counts
    assert "NhwcConv" not in _ops(tmp_path / "cpu.onnx")
    feeds = _feeds(fused_bundle)
    ref = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = ort.InferenceSession(str(tmp_path / "cpu.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
    for r, g in zip(ref, got):
        assert np.abs(r - g).max() / np.abs(r).max() < 1e-5


def test_cuda_fused_graph_on_the_gpu(fused_bundle):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            "the fused graph's kernels (NhwcConv, GroupNorm, BiasSplitGelu) exist only in onnxruntime's "
            "CUDA provider; install onnxruntime-gpu on a CUDA machine to run this parity check"
        )
    feeds = _feeds(fused_bundle)
    ref = ort.InferenceSession(str(fused_bundle / "denoiser/model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )
    sess = ort.InferenceSession(
        str(fused_bundle / "denoiser/model.fp16.fused.onnx"), providers=["CUDAExecutionProvider"]
    )
    for r, g in zip(ref, sess.run(None, feeds)):
        assert np.abs(r - g).max() / np.abs(r).max() < 2e-2


def test_optimize_needs_fp16(tmp_path):
    pipeline = make(tmp_path / "audioldm")
    with pytest.raises(ValueError, match="--fp16"):
        import_audioldm(pipeline, tmp_path / "b", optimize="gpu")
    with pytest.raises(ValueError, match="valid: None, gpu"):
        import_audioldm(pipeline, tmp_path / "c", fp16=True, optimize="tensorrt")
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
