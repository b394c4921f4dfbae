import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.jobs.bulk import GenerateJob, run_job
from reaudio.engine.jobs.library import LIBRARY_INDEX, LOCK_FILE, Library, LibraryLocked

CLI = [sys.executable, "-m", "reaudio.engine.cli"]


def _entries(out):
    path = out / LIBRARY_INDEX
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
    cmd = [
        *CLI,
        "-q",
        "generate",
        str(prompts),
        "--out",
        str(out),
        "--bundle",
        str(tiny_bundle),
        "--batch-size",
        "1",
        "--steps",
        "60",
        "--backend",
        "cpu",
        "--duration",
        "1.0",
    ]
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
    assert not [p for p in out.glob(".*") if p.name != LOCK_FILE]  # no partial files left behind
    for e in entries:
        audio, _ = sf.read(out / e["file"])
        assert len(audio) == 8000


def test_a_bad_manifest_line_is_skipped_reported_and_kept(tmp_path, caplog):
    lib = Library(tmp_path)
    lib.write("a.wav", np.zeros(100, np.float32), 8000, {"key": "a#0"})
    with open(tmp_path / LIBRARY_INDEX, "a") as f:
        f.write('{"key": "b#0", "fi')  # a crash mid-append
    lib.close()
    before = (tmp_path / LIBRARY_INDEX).read_bytes()
    with caplog.at_level("WARNING"), Library(tmp_path) as lib:
        assert set(lib.entries) == {"a#0"} and lib.is_finished("a#0")
        assert (tmp_path / LIBRARY_INDEX).read_bytes() == before  # reading changes nothing
        assert f"{LIBRARY_INDEX}:2: not a library entry" in caplog.text
        lib.write("c.wav", np.zeros(100, np.float32), 8000, {"key": "c#0"})
    lines = (tmp_path / LIBRARY_INDEX).read_text().splitlines()
    assert lines[1] == '{"key": "b#0", "fi' and json.loads(lines[2])["key"] == "c#0"  # the cut line stays whole


def test_garbage_mid_manifest_loses_no_later_entry(tmp_path):
    with Library(tmp_path) as lib:
        for name in "abc":
            lib.write(f"{name}.wav", np.zeros(100, np.float32), 8000, {"key": f"{name}#0"})
    path = tmp_path / LIBRARY_INDEX
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage \x00 here", lines[1], lines[2]]) + "\n")
    with Library(tmp_path, writable=False) as lib:
        assert set(lib.entries) == {"a#0", "b#0", "c#0"}
    assert len(path.read_text().splitlines()) == 4


def test_manifest_entries_cannot_point_outside_the_library(tmp_path):
    outside = tmp_path / "x.wav"
    lib_dir = tmp_path / "lib"
    with Library(lib_dir) as lib:
        entry = lib.write("x.wav", np.zeros(100, np.float32), 8000, {"key": "x#0"})
    (lib_dir / "x.wav").rename(outside)
    (lib_dir / LIBRARY_INDEX).write_text(json.dumps({**entry, "file": "../x.wav"}) + "\n")
    with Library(lib_dir) as lib:
        assert not lib.is_finished("x#0")


def test_a_symlinked_manifest_is_refused(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / LIBRARY_INDEX).symlink_to(target)
    with pytest.raises(ValueError, match="not a regular file"):
        Library(tmp_path / "lib")
    assert target.read_text() == "keep me\n"


def test_one_job_per_library_folder(tiny_bundle, tmp_path):
    out = tmp_path / "lib"
    with Library(out):
        with pytest.raises(LibraryLocked, match=f"being written by another reaudio job \\(pid {os.getpid()} "):
            Library(out)
        proc = subprocess.run(
            [
                *CLI,
                "generate",
                str(_prompts(tmp_path, 2)),
                "--out",
                str(out),
                "--bundle",
                str(tiny_bundle),
                "--backend",
                "cpu",
            ],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and "being written by another reaudio job" in proc.stderr
        assert not _entries(out)
        # A dry run beside the running job neither waits for it nor touches its files.
        (out / ".x.wav.part").write_bytes(b"in progress")
        dry = subprocess.run(
            [
                *CLI,
                "generate",
                str(_prompts(tmp_path, 2)),
                "--out",
                str(out),
                "--bundle",
                str(tiny_bundle),
                "--dry-run",
            ],
            capture_output=True,
            text=True,
        )
        assert dry.returncode == 0, dry.stderr
        assert (out / ".x.wav.part").read_bytes() == b"in progress"
    Library(out).close()  # released


def test_name_template_collisions_and_bad_fields(tiny_bundle, tmp_path):
    prompts = _prompts(tmp_path, 2)
    with pytest.raises(ValueError, match="gives the same file"):
        run_job(GenerateJob(prompts, tmp_path / "o", tiny_bundle, variations=2, name_template="{id}"), progress=False)
    with pytest.raises(ValueError, match=r"fields: \{id\}, \{slug\}, \{seed\}, \{variation\}"):
        run_job(GenerateJob(prompts, tmp_path / "o", tiny_bundle, name_template="{prompt}"), progress=False)


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_bundle, tmp_path):
    proc = subprocess.run(
        [
            *CLI,
            "generate",
            str(_prompts(tmp_path, 2)),
            "--out",
            str(tmp_path / "o"),
            "--bundle",
            str(tiny_bundle),
            "--dry-run",
            "--variations",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "2 prompt(s) → 4 clip(s)" in proc.stdout and "sound-number-0-" in proc.stdout and "-v1.wav" in proc.stdout
    assert not (tmp_path / "o").exists()
    for bad in (["--bundle", str(tmp_path / "nonexistent")], ["--bundle", str(tiny_bundle), "--steps", "0"]):
        proc = subprocess.run(
            [*CLI, "generate", str(_prompts(tmp_path, 2)), "--out", str(tmp_path / "o"), *bad, "--dry-run"],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 2 and "error" in proc.stderr, proc.stderr
    assert not (tmp_path / "o").exists()


def test_cli_quiet_after_the_subcommand_prints_nothing(tiny_bundle, tmp_path):
    proc = subprocess.run(
        [
            *CLI,
            "generate",
            str(_prompts(tmp_path, 2)),
            "--out",
            str(tmp_path / "o"),
            "--bundle",
            str(tiny_bundle),
            "--backend",
            "cpu",
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""
    assert len(_entries(tmp_path / "o")) == 2
    loud = subprocess.run(
        [
            *CLI,
            "generate",
            str(_prompts(tmp_path, 3)),
            "--out",
            str(tmp_path / "o"),
            "--bundle",
            str(tiny_bundle),
            "--backend",
            "cpu",
        ],
        capture_output=True,
        text=True,
    )
    assert "1 clip(s) written, 2 already done, 0 failed" in loud.stdout
    assert "clip/s" in loud.stderr  # the progress bar


def test_library_scales_down_audio_that_would_clip_instead_of_clipping(tmp_path):
    from reaudio.engine.jobs.library import OVER_PEAK_DBFS

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


def test_a_clip_is_done_only_with_the_same_settings_and_bundle(tiny_bundle, tmp_path):
    prompts, out = _prompts(tmp_path, 2), tmp_path / "lib"
    job = GenerateJob(prompts, out, tiny_bundle, backend="cpu", steps=2, duration=0.5)
    assert run_job(job, progress=False).written == 2
    for change, words in (
        (dict(steps=3), "steps 2 → 3"),
        (dict(seed=5), "seed"),
        (dict(audio_format="flac"), "format"),
    ):
        with pytest.raises(
            ValueError, match=f"2 finished clip\\(s\\) were made with other settings: .*{words}.*--overwrite"
        ):
            run_job(
                GenerateJob(prompts, out, tiny_bundle, **{"backend": "cpu", "steps": 2, "duration": 0.5, **change}),
                progress=False,
            )
    again = run_job(
        GenerateJob(prompts, out, tiny_bundle, backend="cpu", steps=3, duration=0.5, overwrite=True), progress=False
    )
    assert again.written == 2
    entries = _entries(out)
    assert len(entries) == 2 and {e["settings"]["steps"] for e in entries} == {3}  # one line per key
    # A repaired clip is listed once too.
    (out / entries[0]["file"]).write_bytes(b"garbage")
    assert (
        run_job(GenerateJob(prompts, out, tiny_bundle, backend="cpu", steps=3, duration=0.5), progress=False).written
        == 1
    )
    assert len(_entries(out)) == 2
