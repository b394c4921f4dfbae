"""`reaudio tune`: per-stage precisions chosen from measured quality and speed, recorded in the bundle,
and what --precision auto and --backend auto then run."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from reaudio.engine.bundle.manifest import TUNING_REPORT, BundleError, read_bundle_manifest
from reaudio.engine.jobs.tuning import QUALITY_BARS, BundleBusy, TuneSettings, tune_locked
from reaudio.engine.pipeline import Engine, Request
from reaudio.engine.stages import backends

HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
FAST = TuneSettings(duration=1.0, steps=3, repeats=1, threads=1)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REAUDIO_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tuned(tiny_artifacts, tmp_path_factory):
    bundle = tmp_path_factory.mktemp("tuned") / "bundle"
    shutil.copytree(tiny_artifacts / "bundle", bundle)
    report = tune_locked(bundle, FAST)
    return bundle, report


def test_the_choice_is_the_fastest_precision_within_the_bar(tuned):
    bundle, report = tuned
    manifest = read_bundle_manifest(bundle)  # report and manifest rewritten, checksums verified
    assert manifest.tuned_precision == report["choice"]
    assert json.loads((bundle / TUNING_REPORT).read_text())["choice"] == report["choice"]
    expected = ["cpu", "openvino"] if HAS_OPENVINO else ["cpu"]
    assert sorted(report["measured"]) == expected
    for backend, stages in report["measured"].items():
        assert set(stages) == set(QUALITY_BARS)
        for stage, rows in stages.items():
            assert "fp32" in rows and (("bf16" in rows) == (backend == "openvino"))
            chosen = report["choice"][backend][stage]
            assert rows[chosen]["passes"]
            assert all(rows[p]["call_s"] >= rows[chosen]["call_s"] for p, row in rows.items() if row["passes"])
            bar = QUALITY_BARS[stage]
            for row in rows.values():
                assert row["passes"] == bar.passes(row[bar.metric])
    # onnxruntime's own fp32 is the reference: it passes with no difference at all.
    assert report["measured"]["cpu"]["denoiser"]["fp32"]["snr_db"] == float("inf")
    assert report["fastest_backend"] == min(report["batch_estimate_s"], key=report["batch_estimate_s"].get)


def test_precision_auto_runs_the_tuned_choice(tuned):
    bundle, report = tuned
    engine = Engine.from_bundle(bundle, backend="cpu", threads=1)
    assert {k: engine.stage_precision[k] for k in report["choice"]["cpu"]} == report["choice"]["cpu"]
    assert engine.stage_precision["vae_encoder"] == "fp32"  # not tuned: fp32
    fp32 = Engine.from_bundle(bundle, backend="cpu", threads=1, precision="fp32")
    assert set(fp32.stage_precision.values()) == {"fp32"}


@pytest.mark.skipif(not HAS_OPENVINO, reason="OpenVINO is not installed")
def test_openvino_runs_each_stage_at_its_tuned_precision(tuned, monkeypatch):
    bundle, report = tuned
    chosen = report["choice"]["openvino"]
    hints = {}
    from reaudio.engine.stages import openvino_runner

    real = openvino_runner.OpenVinoRunner

    class Spy(real):
        def __init__(self, core, path, spec, precision, threads):
            hints[path.parent.name] = (path.name, precision)
            super().__init__(core, path, spec, precision, threads)

    monkeypatch.setattr(openvino_runner, "OpenVinoRunner", Spy)
    engine = Engine.from_bundle(bundle, backend="openvino", threads=1)
    for stage, precision in chosen.items():
        assert hints[stage][1] == precision
        assert hints[stage][0] == ("model.int8.onnx" if precision in ("int8", "int8-bf16") else "model.onnx")
    request = Request("a kettle whistles", seed=2, steps=3, duration=1.0)
    a, b = engine.generate([request])[0].waveform, engine.generate([request])[0].waveform
    assert (a == b).all()  # deterministic per backend, tuned precisions too


def test_backend_auto_follows_the_measurement_on_this_cpu_only(tuned, tmp_path, monkeypatch):
    bundle, report = tuned
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    monkeypatch.setattr(backends, "available_providers", lambda: ["CPUExecutionProvider"])

    def tuned_as(fastest: str, cpu: str) -> None:
        data = json.loads((copy / TUNING_REPORT).read_text())
        data["fastest_backend"], data["machine"]["cpu"] = fastest, cpu
        (copy / TUNING_REPORT).write_text(json.dumps(data))

    tuned_as("openvino", backends.cpu_model())
    assert backends.resolve_backend("auto", copy) == ("openvino" if HAS_OPENVINO else "cpu")
    tuned_as("openvino", "another CPU entirely")
    assert backends.resolve_backend("auto", copy) == "cpu"
    tuned_as("cpu", backends.cpu_model())
    assert backends.resolve_backend("auto", copy) == "cpu"
    (copy / TUNING_REPORT).unlink()
    assert backends.resolve_backend("auto", copy) == "cpu"


def test_a_second_tuner_is_locked_out(tiny_bundle):
    from filelock import FileLock

    with FileLock(tiny_bundle / ".tune.lock"):
        with pytest.raises(BundleBusy, match="another process is tuning"):
            tune_locked(tiny_bundle, FAST)
    assert read_bundle_manifest(tiny_bundle).tuned_precision == {}


def test_a_manifest_naming_an_impossible_precision_is_refused(tiny_bundle):
    path = tiny_bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["tuned_precision"] = {"cpu": {"denoiser": "bf16"}}
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"tuned_precision.cpu.denoiser: 'bf16'; valid on cpu: fp32, int8"):
        read_bundle_manifest(tiny_bundle, verify=False)


def test_cli_tune_prints_the_choice(tiny_bundle, capsys):
    from reaudio.engine.cli import main

    assert main(["tune", str(tiny_bundle), "--backends", "cpu", "--repeats", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "cpu: text_encoder" in out and "fastest here: cpu" in out
    assert read_bundle_manifest(tiny_bundle).tuned_precision["cpu"]["denoiser"] == "fp32"  # no int8 graph
