"""int8 graphs: `reaudio quantize`, --precision int8, and what they keep of the fp32 sound."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnx")

from reaudio.engine.bundle.manifest import read_bundle_manifest
from reaudio.engine.pipeline import Engine, Request
from reaudio.engine.stages.runners import BackendUnavailable
from reaudio.export.int8 import REPORT, Calibration, quantize_bundle, snr_db, spread

FAST = Calibration(prompts=("rain on a roof", "a dog barks", "a door slams", "birdsong"), steps=3, max_feeds=6)


@pytest.fixture(scope="module")
def int8_bundle(tiny_artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "bundle"
    quantize_bundle(tiny_artifacts / "bundle", out, FAST, target_snr_db=None)
    return out


def _clips(bundle, precision, prompts=("waves on a beach", "a kettle whistles")):
    engine = Engine.from_bundle(bundle, backend="cpu", threads=1, precision=precision)
    requests = [Request(p, seed=i, steps=4, duration=2.0) for i, p in enumerate(prompts)]
    return [r.waveform for r in engine.generate(requests, batch_size=2)]


def test_quantised_copy_adds_int8_graphs_and_keeps_fp32(tiny_artifacts, int8_bundle):
    import onnx

    source = read_bundle_manifest(tiny_artifacts / "bundle")
    manifest = read_bundle_manifest(int8_bundle)  # checksums verified, int8 files among them
    for stage in ("denoiser", "decoder"):
        spec = manifest.stages[stage]
        assert spec.int8_file == f"{stage}/model.int8.onnx" and spec.int8_file in manifest.files
        assert manifest.files[spec.file] == source.files[spec.file]  # the fp32 reference is untouched
        ops = {n.op_type for n in onnx.load(str(int8_bundle / spec.int8_file)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert manifest.stages["text_encoder"].int8_file is None
    assert read_bundle_manifest(tiny_artifacts / "bundle").stages["denoiser"].int8_file is None


@pytest.mark.parametrize("stage, scope", [("denoiser", "/unet/"), ("decoder", "/decoder/")])
def test_only_the_unet_and_vae_decoder_convolutions_are_quantised(int8_bundle, stage, scope):
    """Guidance, the sampler update and the vocoder read fp32 tensors; Conv weights are int8, MatMul's fp32."""
    import onnx

    graph = onnx.load(str(int8_bundle / f"{stage}/model.int8.onnx")).graph
    kinds = {n.name: n.op_type for n in graph.node}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    fed = {c for n in graph.node if n.op_type == "DequantizeLinear" for c in consumers.get(n.output[0], [])}
    assert fed and all(name.startswith(scope) for name in fed), sorted(fed)[:5]
    assert "Conv" in {kinds[name] for name in fed}
    weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.INT8}
    made_by = {out: n.op_type for n in graph.node for out in n.output}
    matmuls = [n for n in graph.node if n.op_type in ("MatMul", "Gemm")]
    assert weights and not [n.name for n in matmuls if any(made_by.get(i) == "DequantizeLinear" for i in n.input)]


def test_the_vocoder_is_quantised_only_when_asked(tiny_artifacts, int8_bundle, tmp_path):
    import onnx

    def vocoder_readers(bundle):
        graph = onnx.load(str(bundle / "decoder/model.int8.onnx")).graph
        dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        return {n.name for n in graph.node if n.name.startswith("/vocoder/") and dequantised & set(n.input)}

    assert vocoder_readers(int8_bundle) == set()
    out = tmp_path / "with-vocoder"
    quantize_bundle(tiny_artifacts / "bundle", out, FAST, vocoder=True, target_snr_db=None)
    readers = vocoder_readers(out)
    assert readers and {n.split("/")[2] for n in readers} >= {"conv_pre", "conv_post"}
    assert json.loads((out / REPORT).read_text())["vocoder"] is True
    assert json.loads((int8_bundle / REPORT).read_text())["vocoder"] is False
    wave = _clips(out, "int8", prompts=("a kettle whistles",))[0]
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0


def test_int8_sound_is_close_to_fp32_but_not_identical(int8_bundle):
    fp32 = _clips(int8_bundle, "fp32")
    int8 = _clips(int8_bundle, "int8")
    for a, b in zip(fp32, int8):
        assert a.shape == b.shape and np.isfinite(b).all()
        assert not np.array_equal(a, b)  # the int8 graphs really ran
        assert snr_db(a, b) > 5.0, snr_db(a, b)
    report = json.loads((int8_bundle / REPORT).read_text())
    # A random tiny model: the bounds only say "close, not garbage"; the default model's eval says more.
    assert 0 < report["decoder"]["log_mel_l1"] < 1.0 and report["decoder"]["waveform_snr_db"] < 200
    assert 10.0 < report["denoiser"]["next_latent_snr_db"] < 200 and report["denoiser"]["x0_snr_db"] > 5.0


def test_int8_is_deterministic(int8_bundle):
    a, b = _clips(int8_bundle, "int8"), _clips(int8_bundle, "int8")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_int8_needs_int8_graphs_and_the_cpu(tiny_bundle, int8_bundle):
    with pytest.raises(BackendUnavailable, match="reaudio quantize"):
        Engine.from_bundle(tiny_bundle, backend="cpu", precision="int8")
    from reaudio.engine.stages.backends import check_precision

    with pytest.raises(BackendUnavailable, match="CPU backend only"):
        check_precision(int8_bundle, read_bundle_manifest(int8_bundle), "cuda", "int8")
    with pytest.raises(ValueError, match="valid: auto, fp32, fp16, int8"):
        Engine.from_bundle(int8_bundle, backend="cpu", precision="int4")


def test_openvino_int8_bf16_runs_the_int8_graphs_with_bf16_around_them(int8_bundle, tiny_bundle, monkeypatch):
    """The mixed precision: each stage's int8 graph where it has one, OpenVINO's bf16 arithmetic for
    every layer the graph keeps in float (int8 alone keeps them in f32)."""
    ov = pytest.importorskip("openvino")
    monkeypatch.setenv("REAUDIO_CACHE", str(int8_bundle.parent / "cache"))
    from reaudio.engine.stages import openvino_runner

    built = {}
    real = openvino_runner.OpenVinoRunner

    class Spy(real):
        def __init__(self, core, path, spec, precision, threads):
            super().__init__(core, path, spec, precision, threads)
            built[(path.parent.name, precision)] = (path.name, self.compiled.get_property("INFERENCE_PRECISION_HINT"))

    monkeypatch.setattr(openvino_runner, "OpenVinoRunner", Spy)
    engines = {p: Engine.from_bundle(int8_bundle, backend="openvino", threads=1, precision=p) for p in ("bf16", "int8")}
    mixed = Engine.from_bundle(int8_bundle, backend="openvino", threads=1, precision="int8-bf16")
    assert mixed.stage_precision["denoiser"] == mixed.stage_precision["decoder"] == "int8-bf16"
    assert mixed.stage_precision["text_encoder"] == "bf16"  # reported as what it runs: no int8 graph
    assert engines["int8"].stage_precision["text_encoder"] == "fp32"
    for stage in ("denoiser", "decoder"):
        graph, hint = built[(stage, "int8-bf16")]
        assert graph == "model.int8.onnx" and built[(stage, "int8")][0] == "model.int8.onnx"
        assert hint == built[(stage, "bf16")][1]  # bf16 wherever the CPU has it
        assert built[(stage, "int8")][1] == ov.Type.f32
    assert built[("text_encoder", "int8-bf16")][0] == "model.onnx"  # no int8 graph: the fp32 one, in bf16

    request = Request("a kettle whistles", seed=3, steps=4, duration=2.0)
    a, b = mixed.generate([request])[0].waveform, mixed.generate([request])[0].waveform
    assert np.array_equal(a, b)  # deterministic
    reference = engines["int8"].generate([request])[0].waveform
    assert a.shape == reference.shape and np.isfinite(a).all()
    from reaudio.engine.audio.frontend import log_mel

    # bf16 keeps ~3 significant digits around the int8 layers: the log-mel moves, the sound stays.
    assert np.abs(log_mel(a, mixed.manifest.mel) - log_mel(reference, mixed.manifest.mel)).mean() < 0.5

    with pytest.raises(BackendUnavailable, match="precision 'int8-bf16' runs on the openvino backend only"):
        Engine.from_bundle(int8_bundle, backend="cpu", precision="int8-bf16")
    with pytest.raises(BackendUnavailable, match="reaudio quantize"):
        Engine.from_bundle(tiny_bundle, backend="openvino", precision="int8-bf16")


def test_tune_measures_int8_bf16_only_on_openvino_and_only_with_int8_graphs(int8_bundle, tiny_bundle):
    from reaudio.engine.jobs.tuning import candidates

    manifest = read_bundle_manifest(int8_bundle)
    assert candidates(manifest, "denoiser", "openvino") == ["fp32", "bf16", "int8", "int8-bf16"]
    assert candidates(manifest, "denoiser", "cpu") == ["fp32", "int8"]
    assert candidates(manifest, "text_encoder", "openvino") == ["fp32", "bf16"]  # no int8 graph
    assert candidates(read_bundle_manifest(tiny_bundle), "denoiser", "openvino") == ["fp32", "bf16"]


def test_in_place_quantisation_rewrites_the_manifest_last(tiny_bundle, monkeypatch):
    import reaudio.export.int8 as int8

    before = (tiny_bundle / "manifest.json").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(int8, "compare_graphs", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        quantize_bundle(tiny_bundle, calibration=FAST, target_snr_db=None)
    assert (tiny_bundle / "manifest.json").read_bytes() == before
    assert read_bundle_manifest(tiny_bundle).stages["denoiser"].int8_file is None  # still loads, verified
    monkeypatch.undo()
    manifest = quantize_bundle(tiny_bundle, calibration=FAST, target_snr_db=None)
    assert manifest.stages["decoder"].int8_file and not (tiny_bundle / ".int8-partial").exists()
    assert Engine.from_bundle(tiny_bundle, backend="cpu", precision="int8").precision == "int8"


def test_a_second_quantiser_is_locked_out(tiny_bundle):
    from filelock import FileLock

    from reaudio.export.int8 import BundleBusy

    with FileLock(tiny_bundle / ".quantize.lock"):
        with pytest.raises(BundleBusy, match="another process"):
            quantize_bundle(tiny_bundle, calibration=FAST)


def test_quantize_refuses_existing_out_and_corrupt_bundle(tiny_bundle, int8_bundle, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        quantize_bundle(tiny_bundle, int8_bundle, FAST)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "decoder" / "model.onnx").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checksum mismatch"):
        quantize_bundle(broken, tmp_path / "out", FAST)
    assert not (tmp_path / "out").exists()


def test_spread_keeps_ends_and_count():
    assert spread(list(range(10)), 4) == [0, 3, 6, 9]
    assert spread([1, 2], 5) == [1, 2]


def test_snr_db():
    a = np.ones(100, dtype=np.float32)
    assert snr_db(a, a) == float("inf")
    assert abs(snr_db(a, a * 1.1) - 20.0) < 1e-4  # float32 1.1


def test_cli_quantize_then_generate_int8(tiny_bundle, tmp_path, capsys):
    from reaudio.engine.cli import main

    prompts = tmp_path / "calib.txt"
    prompts.write_text("rain\nthunder\n")
    assert (
        main(
            [
                "quantize",
                str(tiny_bundle),
                "--calibration-prompts",
                str(prompts),
                "--calibration-steps",
                "2",
                "--threads",
                "1",
                "--target-snr",  # the sensitivity pass has its own tests (test_int8_sensitivity.py)
                "0",
            ]
        )
        == 0
    )
    assert "--precision int8" in capsys.readouterr().out
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("a bell rings\n")
    out = tmp_path / "lib"
    args = [
        "generate",
        str(prompt_file),
        "--out",
        str(out),
        "--bundle",
        str(tiny_bundle),
        "--backend",
        "cpu",
        "--steps",
        "2",
        "--duration",
        "1",
        "-q",
    ]
    assert main([*args, "--precision", "int8"]) == 0
    entry = json.loads((out / "library.jsonl").read_text().splitlines()[-1])
    assert entry["settings"]["int8"] is True
    # Resuming the same library in fp32 would mix precisions: refused up front.
    assert main(args) == 2
    assert "int8 True → False" in capsys.readouterr().err
