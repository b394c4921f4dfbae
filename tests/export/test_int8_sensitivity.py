"""The per-layer sensitivity pass: the most sensitive convolutions stay fp32 until x0 meets the target."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")

from reaudio.engine.jobs.tuning import stage_snr_db
from reaudio.engine.pipeline import Engine, Request
from reaudio.export.int8 import REPORT, Calibration, quantize_bundle

FAST = Calibration(prompts=("rain on a roof", "a dog barks", "a door slams", "birdsong"), steps=3, max_feeds=6)


@pytest.fixture(scope="module")
def passes(tiny_artifacts, tmp_path_factory):
    """The tiny bundle quantised twice: every convolution, and with a target above what that reaches."""
    root = tmp_path_factory.mktemp("sensitivity")
    quantize_bundle(tiny_artifacts / "bundle", root / "all", FAST, target_snr_db=None)
    every = json.loads((root / "all" / REPORT).read_text())
    assert "denoiser_sensitivity" not in every
    # Above what every convolution in int8 gives (the pass reports that too): some must stay fp32.
    quantize_bundle(tiny_artifacts / "bundle", root / "kept", FAST, target_snr_db=40.0)
    return root, json.loads((root / "kept" / REPORT).read_text())["denoiser_sensitivity"]


def _int8_convs(path):
    import onnx

    graph = onnx.load(str(path)).graph
    dequantised = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in graph.node if n.op_type == "Conv" and n.name.startswith("/unet/")]
    return {n.name for n in convs if dequantised & set(n.input)}, {n.name for n in convs}


def test_the_most_sensitive_layers_stay_fp32_and_the_target_is_met(passes):
    root, found = passes
    assert found["all_int8_snr_db"] < 40.0 <= found["snr_db"]
    kept, scores = found["kept_fp32"], found["layer_snr_db"]
    assert kept and len(kept) < found["layers"] == len(scores)
    # Kept: the lowest single-layer SNRs, most sensitive first.
    assert [scores[k] for k in kept] == sorted(scores[k] for k in kept)
    assert max(scores[k] for k in kept) <= min(v for n, v in scores.items() if n not in kept)
    quantised, convs = _int8_convs(root / "kept" / "denoiser" / "model.int8.onnx")
    assert quantised == convs - set(kept)
    every, _ = _int8_convs(root / "all" / "denoiser" / "model.int8.onnx")
    assert every == convs


def test_keeping_layers_brings_the_clip_closer_to_fp32(passes):
    root, _ = passes

    def x0_snr(bundle):
        request = Request("a kettle whistles", seed=3, steps=4, duration=2.0)
        fp32 = Engine.from_bundle(bundle, backend="cpu", threads=1, precision="fp32").generate([request])[0]
        int8 = Engine.from_bundle(bundle, backend="cpu", threads=1, precision="int8").generate([request])[0]
        assert np.isfinite(int8.waveform).all() and not np.array_equal(fp32.waveform, int8.waveform)
        return stage_snr_db([[fp32.waveform]], [[int8.waveform]], 0)

    assert x0_snr(root / "kept") > x0_snr(root / "all")


def test_stage_snr_pools_the_inputs():
    loud, quiet = np.ones(100), np.full(100, 1e-3)
    reference = [[loud], [quiet]]
    # The quiet input's own SNR is 0 dB, but pooled it barely counts: signal 100, error 1e-4.
    assert stage_snr_db(reference, [[loud], [2 * quiet]], 0) == pytest.approx(60.0)
    assert stage_snr_db(reference, reference, 0) == float("inf")


def test_quantize_command_runs_the_pass_by_default(monkeypatch, tiny_bundle):
    """`reaudio quantize` passes its --target-snr (default: the measured 30 dB; 0: no pass) through."""
    import reaudio.export.int8 as int8
    from reaudio.engine.cli import main

    seen = []
    monkeypatch.setattr(int8, "quantize_bundle", lambda *a, **k: seen.append(k["target_snr_db"]) or _Manifest())
    assert main(["quantize", str(tiny_bundle)]) == 0
    assert main(["quantize", str(tiny_bundle), "--target-snr", "0"]) == 0
    assert main(["quantize", str(tiny_bundle), "--target-snr", "35"]) == 0
    assert seen == [int8.DENOISER_TARGET_SNR_DB, None, 35.0] and int8.DENOISER_TARGET_SNR_DB == 30.0


class _Manifest:
    stages: dict = {}
