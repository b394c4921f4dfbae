"""benchmarks/end_to_end.py: whole `reaudio generate` processes per backend and precision, in
rotated rounds, beside each configuration's evaluation."""

from __future__ import annotations

import json
import subprocess

import pytest

from benchmarks import end_to_end
from benchmarks.end_to_end import Config, check_runnable, evaluate, parse_config, rotated


def test_configurations_are_parsed_and_bad_ones_named():
    assert parse_config("openvino:int8-bf16") == Config("openvino", "int8-bf16")
    for bad in ("openvino", "gpu:fp32", "cpu:int4"):
        with pytest.raises(ValueError, match="BACKEND:PRECISION"):
            parse_config(bad)


def test_rounds_rotate_so_no_configuration_is_always_first():
    configs = ["a", "b", "c"]
    assert [rotated(configs, r)[0] for r in range(4)] == ["a", "b", "c", "a"]
    assert all(sorted(rotated(configs, r)) == configs for r in range(3))


def test_what_cannot_run_is_refused_before_timing(tiny_artifacts):
    bundle = tiny_artifacts / "bundle"  # no int8 graphs
    with pytest.raises(SystemExit, match="reaudio quantize"):
        check_runnable(bundle, [Config("cpu", "fp32"), Config("cpu", "int8")])
    with pytest.raises(SystemExit, match="twice"):
        check_runnable(bundle, [Config("cpu", "fp32"), Config("cpu", "fp32")])
    check_runnable(bundle, [Config("cpu", "fp32"), Config("auto", "auto")])


def test_rounds_time_whole_processes_and_check_their_audio(tiny_artifacts, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("rain on a roof\na dog barks\n")
    out = tmp_path / "report.json"
    argv = ["--bundle", str(tiny_artifacts / "bundle"), "--prompts", str(prompts), "--rounds", "2"]
    argv += ["--configs", "cpu:fp32", "auto:auto", "--threads", "1", "--work", str(tmp_path / "w"), "--json", str(out)]
    report = end_to_end.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["configs"] == ["cpu fp32", "auto auto"] and report["clips"] == 2
    for speed in report["speed"].values():
        assert len(speed["seconds"]) == 2 and speed["median_s"] > 0 and speed["clips"] == 2
        assert speed["same_audio_every_round"]
    table = end_to_end.format_table(report)
    assert "| cpu fp32 |" in table and "1.00×" in table and "vs cpu fp32" in table
    assert "cpu_flags" in report["machine"]
    assert report["runs_as"]["cpu fp32"] == "cpu: fp32"  # the tiny bundle is untuned: auto runs fp32 too
    assert report["runs_as"]["auto auto"].endswith(": fp32")


def _fake_results(folder, bundle, backend="cpu", clips=4):
    folder.mkdir(parents=True)
    metrics = {
        "fad": 12.5,
        "kl": 1.0,
        "clap_score": 0.3,
        "clips": clips,
        "copy_top1": {"fad": 10.0},
        "real_floor": {"fad": 5.0, "clips": clips},
        "settings": {"bundle": str(bundle), "backend": backend},
    }
    (folder / "results.json").write_text(json.dumps(metrics))


def test_an_earlier_evaluation_is_reused_only_when_it_scored_the_same_thing(tiny_artifacts, tmp_path, monkeypatch):
    bundle = tiny_artifacts / "bundle"
    _fake_results(tmp_path / "eval-cpu-fp32", bundle)
    _fake_results(tmp_path / "eval-openvino-fp32", bundle, backend="cpu")  # scored on another backend
    ran = []

    def fails(cmd, **kwargs):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "no corpus")

    monkeypatch.setattr(subprocess, "run", fails)
    found = evaluate(bundle, tmp_path / "m.jsonl", 4, tmp_path, Config("cpu", "fp32"), None)
    assert ran == [] and found["fad"] == 12.5 and found["copy_top1_fad"] == 10.0 and found["real_floor_fad"] == 5.0

    for config, limit in ((Config("cpu", "fp32"), 8), (Config("openvino", "fp32"), 4)):
        with pytest.raises(RuntimeError, match="reaudio eval failed"):
            evaluate(bundle, tmp_path / "m.jsonl", limit, tmp_path, config, None)
    assert len(ran) == 2 and all("eval" in cmd and "--backend" in cmd for cmd in ran)
