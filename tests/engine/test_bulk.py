import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.bulk import GenerateJob, run_job
from reaudio.engine.library import LIBRARY_MANIFEST, Library
from reaudio.engine.postprocess import PostProcess

pytest.importorskip("torch")

CLI = [sys.executable, "-m", "reaudio.training.cli"]


def _entries(out):
    path = out / LIBRARY_MANIFEST
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _prompts(tmp_path, n):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"sound number {i}\n" for i in range(n)))
    return path


def test_txt_csv_jsonl_jobs_write_clips_and_manifest(tiny_bundle, tmp_path):
    (tmp_path / "p.csv").write_text("prompt,id,seed,duration\na beep,beep,1,0.5\na hum,hum,2,\n")
    (tmp_path / "p.jsonl").write_text('{"prompt": "a chirp", "id": "chirp", "variations": 2}\n')
    for name in ("p.csv", "p.jsonl"):
        summary = run_job(GenerateJob(tmp_path / name, tmp_path / "lib", tiny_bundle, backend="cpu"), progress=False)
        assert not summary.failed
    entries = _entries(tmp_path / "lib")
    assert sorted(e["key"] for e in entries) == ["beep#0", "chirp#0", "chirp#1", "hum#0"]
    beep = next(e for e in entries if e["id"] == "beep")
    audio, rate = sf.read(tmp_path / "lib" / beep["file"])
    assert rate == 8000 and len(audio) == 4000 and beep["seed"] == 1 and beep["duration_s"] == 0.5
    assert len(beep["neighbours"]) == 2 and len(beep["bundle_sha256"]) == 64
    chirps = [e for e in entries if e["id"] == "chirp"]
    assert chirps[1]["seed"] == chirps[0]["seed"] + 1


def test_rerun_skips_finished_and_redoes_altered_files(tiny_bundle, tmp_path):
    job = GenerateJob(_prompts(tmp_path, 3), tmp_path / "lib", tiny_bundle, backend="cpu", audio_format="flac")
    first = run_job(job, progress=False)
    assert first.written == 3
    again = run_job(job, progress=False)
    assert (again.written, again.skipped) == (0, 3)
    victim = tmp_path / "lib" / _entries(tmp_path / "lib")[1]["file"]
    victim.write_bytes(b"garbage")
    third = run_job(job, progress=False)
    assert (third.written, third.skipped) == (1, 2)
    sf.read(victim)  # readable again
    assert len({e["key"] for e in _entries(tmp_path / "lib")}) == 3


def test_killed_run_resumes_with_every_clip_exactly_once(tiny_bundle, tmp_path):
    n = 24
    prompts = _prompts(tmp_path, n)
    out = tmp_path / "lib"
    cmd = [*CLI, "-q", "generate", str(prompts), "--out", str(out), "--bundle", str(tiny_bundle),
           "--batch-size", "1", "--steps", "60", "--backend", "cpu", "--duration", "1.0"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(_entries(out)) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(_entries(out))
    assert 3 <= done_before < n
    rerun = subprocess.run(cmd, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    entries = _entries(out)
    keys = [e["key"] for e in entries]
    assert len(keys) == len(set(keys)) == n
    files = sorted(p.name for p in out.iterdir() if p.suffix == ".wav")
    assert files == sorted(e["file"] for e in entries)
    assert not list(out.glob(".*"))  # no partial files left behind
    for e in entries:
        audio, _ = sf.read(out / e["file"])
        assert len(audio) == 8000


def test_interrupted_manifest_line_is_dropped(tmp_path):
    lib = Library(tmp_path)
    lib.write("a.wav", np.zeros(100, np.float32), 8000, {"key": "a#0"})
    with open(tmp_path / LIBRARY_MANIFEST, "a") as f:
        f.write('{"key": "b#0", "fi')  # a crash mid-append
    lib = Library(tmp_path)
    assert set(lib.entries) == {"a#0"} and lib.is_finished("a#0")
    assert (tmp_path / LIBRARY_MANIFEST).read_text().endswith("}\n")


def test_name_template_collisions_and_bad_fields(tiny_bundle, tmp_path):
    prompts = _prompts(tmp_path, 2)
    with pytest.raises(ValueError, match="gives the same file"):
        run_job(GenerateJob(prompts, tmp_path / "o", tiny_bundle, variations=2, name_template="{id}"), progress=False)
    with pytest.raises(ValueError, match=r"fields: \{id\}, \{slug\}, \{seed\}, \{variation\}"):
        run_job(GenerateJob(prompts, tmp_path / "o", tiny_bundle, name_template="{prompt}"), progress=False)


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_bundle, tmp_path):
    proc = subprocess.run(
        [*CLI, "generate", str(_prompts(tmp_path, 2)), "--out", str(tmp_path / "o"), "--bundle", str(tiny_bundle),
         "--dry-run", "--variations", "2"],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 prompt(s) → 4 clip(s)" in proc.stdout and "00001-sound-number-0-v1.wav" in proc.stdout
    assert not _entries(tmp_path / "o")


def test_postprocess_trim_loudness_peak():
    rate = 1000
    x = np.zeros(3000, np.float32)
    x[1000:2000] = 0.1 * np.sin(np.arange(1000))
    trimmed = PostProcess(trim_db=-40)(x, rate)
    assert 1000 <= len(trimmed) <= 1030
    loud = PostProcess(loudness_db=-20)(x, rate)
    assert 20 * np.log10(np.sqrt(np.mean(loud.astype(np.float64) ** 2))) == pytest.approx(-20, abs=0.01)
    peaked = PostProcess(peak_db=-1)(x, rate)
    assert np.abs(peaked).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    with pytest.raises(ValueError, match="between -120 and 0"):
        PostProcess(peak_db=3)


def test_cli_quiet_after_the_subcommand_prints_nothing(tiny_bundle, tmp_path):
    proc = subprocess.run(
        [*CLI, "generate", str(_prompts(tmp_path, 2)), "--out", str(tmp_path / "o"), "--bundle", str(tiny_bundle),
         "--backend", "cpu", "--quiet"],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert len(_entries(tmp_path / "o")) == 2
    loud = subprocess.run(
        [*CLI, "generate", str(_prompts(tmp_path, 3)), "--out", str(tmp_path / "o"), "--bundle", str(tiny_bundle),
         "--backend", "cpu"],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert "1 clip(s) written, 2 already done, 0 failed" in loud.stdout
    assert "clip/s" in loud.stderr  # the progress bar


def test_library_scales_down_audio_that_would_clip_instead_of_clipping(tmp_path):
    from reaudio.engine.library import OVER_PEAK_DBFS

    library = Library(tmp_path, "wav")
    rate = 8000
    t = np.arange(rate) / rate
    loud = (2.0 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)  # peak 2.0: would be hard-clipped
    quiet = (0.5 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)
    loud_entry = library.write("loud.wav", loud, rate, {"key": "loud#0"})
    quiet_entry = library.write("quiet.wav", quiet, rate, {"key": "quiet#0"})
    written, _ = sf.read(str(tmp_path / "loud.wav"))
    assert np.abs(written).max() == pytest.approx(10 ** (OVER_PEAK_DBFS / 20), abs=1e-3)
    # Same shape, just quieter: no flattened peaks.
    assert np.corrcoef(written, loud)[0, 1] > 0.9999
    assert loud_entry["gain_db"] == pytest.approx(OVER_PEAK_DBFS - 20 * np.log10(2.0), abs=1e-3)
    assert quiet_entry["gain_db"] == 0.0
    assert np.abs(sf.read(str(tmp_path / "quiet.wav"))[0]).max() == pytest.approx(0.5, abs=1e-3)
