"""`reaudio bench`: per-stage latencies, throughput and the machine, as a table and as JSON."""

from __future__ import annotations

import json

import pytest

from reaudio.engine.jobs.bench import (
    BenchSettings,
    format_table,
    percentile,
    run_bench,
    timed_stages,
)
from reaudio.engine.pipeline import Engine
from reaudio.engine.stages.backends import SPEED_FLAGS

FAST = BenchSettings(batch_sizes=(1, 2), duration=1.0, steps=3, repeats=2, warmup=1)


@pytest.fixture(scope="module")
def engine(tiny_artifacts):
    return Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", threads=1)


def test_report_has_every_stage_and_consistent_figures(engine):
    report = run_bench(engine, FAST)
    assert [row["batch"] for row in report["results"]] == [1, 2]
    for row in report["results"]:
        stages = row["stages"]
        assert set(stages) == {"text_encoder", "retrieval", "denoiser", "decoder"}
        assert stages["denoiser"]["calls"] == FAST.steps * FAST.repeats  # one call per step, per timed run
        assert stages["decoder"]["calls"] == FAST.repeats
        assert 0 < stages["denoiser"]["p50"] <= stages["denoiser"]["p95"]
        run = row["run_s"]["p50"]
        assert row["clips_per_s"] == pytest.approx(row["batch"] / run)
        assert row["real_time_factor"] == pytest.approx(run / (row["batch"] * FAST.duration))
        # The stages happen inside a run, so together they cannot take longer than it.
        assert stages["denoiser"]["p50"] * FAST.steps + stages["decoder"]["p50"] <= row["run_s"]["p95"] * 1.05
        assert row["peak_rss_mb"] > 10
    machine = report["machine"]
    assert machine["threads"] == 1 and machine["onnxruntime"] and machine["cpu"]
    # The flags that decide a CPU's best precision are recorded with every timing, known ones only.
    assert isinstance(machine["cpu_flags"], list) and set(machine["cpu_flags"]) <= set(SPEED_FLAGS)
    assert report["backend"] == "cpu" and report["precision"] == "auto"
    json.dumps(report)  # JSON-ready as it is


def test_stage_timers_are_removed_afterwards(engine):
    runners, search = dict(engine.runners), engine.db.search
    with timed_stages(engine) as calls:
        engine.embed_text(["a dog"])
    assert len(calls["text_encoder"]) == 1
    assert engine.runners == runners and engine.db.search == search


def test_table_names_stages_and_throughput(engine):
    table = format_table(run_bench(engine, BenchSettings(batch_sizes=(1,), duration=1.0, steps=2, repeats=1)))
    for word in ("text encoder", "retrieval", "denoiser step", "decoder", "clips/s", "real-time factor", "machine:"):
        assert word in table


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_sizes": ()}, "batch_sizes"),
        ({"batch_sizes": (0,)}, "batch_sizes"),
        ({"repeats": 0}, "repeats"),
        ({"duration": -1.0}, "duration"),
    ],
)
def test_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchSettings(**kwargs)


def test_percentile():
    assert percentile([1.0, 2.0, 3.0], 50) == 2.0
    assert percentile([1.0] * 19 + [100.0], 95) > 1.0


def test_cli_json_on_stdout(tiny_artifacts, capsys):
    from reaudio.engine.cli import main

    code = main(
        [
            "bench",
            "--bundle",
            str(tiny_artifacts / "bundle"),
            "--backend",
            "cpu",
            "--batch-sizes",
            "1",
            "--duration",
            "1",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--threads",
            "1",
            "--json",
            "-",
            "-q",
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"][0]["stages"]["denoiser"]["calls"] == 2


def test_cli_int8_without_int8_graphs_is_a_clear_error(tiny_artifacts, capsys):
    from reaudio.engine.cli import main

    code = main(["bench", "--bundle", str(tiny_artifacts / "bundle"), "--backend", "cpu", "--precision", "int8"])
    assert code == 2
    assert "reaudio quantize" in capsys.readouterr().err


def test_compare_takes_turns_and_measures_each_config_against_the_first(tiny_artifacts):
    import importlib.util

    from reaudio.engine.jobs.bench import compare_engines, format_comparison

    bundle = tiny_artifacts / "bundle"
    engines = {"cpu:fp32": Engine.from_bundle(bundle, backend="cpu", threads=1, precision="fp32")}
    engines["cpu:fp32 again"] = Engine.from_bundle(bundle, backend="cpu", threads=1, precision="fp32")
    has_openvino = importlib.util.find_spec("openvino") is not None
    if has_openvino:
        engines["openvino:bf16"] = Engine.from_bundle(bundle, backend="openvino", threads=1, precision="bf16")
    report = compare_engines(engines, FAST)
    assert [row["batch"] for row in report["results"]] == [1, 2]
    for row in report["results"]:
        first, again = row["configs"]["cpu:fp32"], row["configs"]["cpu:fp32 again"]
        assert first["speedup"] == 1.0 and first["snr_db_vs_first"] == float("inf")
        assert again["snr_db_vs_first"] == float("inf") and again["log_mel_l1_vs_first"] == 0.0
        assert again["speedup"] == pytest.approx(first["run_s"]["p50"] / again["run_s"]["p50"])
        assert len(again["run_s"]["runs"]) == FAST.repeats and again["stages"]["denoiser"]["calls"] == FAST.steps * 2
        if has_openvino:
            bf16 = row["configs"]["openvino:bf16"]
            assert 10 < bf16["snr_db_vs_first"] < 200 and 0 < bf16["log_mel_l1_vs_first"] < 0.5
    assert report["configs"]["cpu:fp32"]["stage_precision"]["denoiser"] == "fp32"
    table = format_comparison(report)
    assert "cpu:fp32 again" in table and "speed-up" in table
    json.dumps(report)


def test_cli_compare_refuses_an_unknown_configuration(tiny_artifacts, capsys):
    from reaudio.engine.cli import main

    code = main(["bench", "--bundle", str(tiny_artifacts / "bundle"), "--compare", "cpu:fp32", "openvino:fp8"])
    assert code == 2
    assert "--compare 'openvino:fp8': give BACKEND:PRECISION" in capsys.readouterr().err
