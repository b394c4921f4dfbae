"""User mistakes end in one line naming the problem, not a traceback (issue 16 item 9)."""

import subprocess
import sys

import pytest

from reaudio.engine.database_ops import ClipListError, read_clip_list

CLI = [sys.executable, "-m", "reaudio.engine.cli"]


def test_cuda_without_a_gpu_is_a_message(tiny_bundle, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "p.txt").write_text("rain\n")
    proc = subprocess.run([*CLI, "generate", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o"), "--bundle",
                           str(tiny_bundle), "--backend", "cuda"], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr


def test_out_under_a_file_is_a_message(tiny_bundle, tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "p.txt").write_text("rain\n")
    (tmp_path / "afile").write_text("x")
    proc = subprocess.run([*CLI, "generate", str(tmp_path / "p.txt"), "--out", str(tmp_path / "afile" / "lib"),
                           "--bundle", str(tiny_bundle)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "afile" in proc.stderr


def test_a_clip_list_line_that_is_not_an_object(tmp_path):
    (tmp_path / "clips.jsonl").write_text('["a.wav", "a sound"]\n')
    with pytest.raises(ClipListError, match="clips.jsonl:1: expected a JSON object, got list"):
        read_clip_list(tmp_path / "clips.jsonl")


def test_a_fractional_seed_in_the_api(tiny_bundle):
    pytest.importorskip("torch")
    from reaudio.engine.engine import Engine, Request

    with pytest.raises(ValueError, match="request 0: seed=1.5 must be an integer"):
        Engine.from_bundle(tiny_bundle, backend="cpu").generate([Request("rain", seed=1.5)])
