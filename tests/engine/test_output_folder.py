"""What a job owns in its output folder: only files the library made are ever deleted or replaced."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from reaudio.engine.jobs.bulk import GenerateJob, run_job
from reaudio.engine.jobs.library import LIBRARY_INDEX, Library

CLI = [sys.executable, "-m", "reaudio.engine.cli"]


def _prompts(tmp_path, n):
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"sound number {i}\n" for i in range(n)))
    return path


def _job(tmp_path, bundle, out, **kw):
    return GenerateJob(_prompts(tmp_path, 2), out, bundle, backend="cpu", steps=2, duration=0.5, **kw)


def test_only_partials_of_ours_are_cleaned(tiny_bundle, tmp_path):
    out = tmp_path / "lib"
    run_job(_job(tmp_path, tiny_bundle, out), progress=False)
    theirs = [out / ".notes.part", out / ".backup.wav.part", out / ".draft.wav.12345678.part"]
    for path in theirs:
        path.write_bytes(b"a user's file")
    ours = out / ".sound-number-0-v0.wav.abcd_123.reaudio"
    ours.write_bytes(b"half a clip")
    run_job(_job(tmp_path, tiny_bundle, out), progress=False)
    assert all(p.read_bytes() == b"a user's file" for p in theirs)
    assert not ours.exists()


def test_a_file_the_library_did_not_make_stops_the_job_unless_allowed(tiny_bundle, tmp_path):
    out = tmp_path / "lib"
    out.mkdir()
    (out / LIBRARY_INDEX).write_text("")
    planned = next(c.file_name for c in _planned(tmp_path, tiny_bundle, out))
    (out / planned).write_bytes(b"someone's recording")
    with pytest.raises(ValueError, match=rf"{planned}.*not made by this library.*--overwrite-foreign"):
        run_job(_job(tmp_path, tiny_bundle, out), progress=False)
    assert (out / planned).read_bytes() == b"someone's recording"
    assert (out / LIBRARY_INDEX).read_text() == ""
    summary = run_job(_job(tmp_path, tiny_bundle, out, overwrite_foreign=True), progress=False)
    assert summary.written == 2 and (out / planned).read_bytes() != b"someone's recording"
    # Once the library made it, it is the library's: a rerun skips it without a word.
    assert run_job(_job(tmp_path, tiny_bundle, out), progress=False).skipped == 2


def test_a_link_at_a_planned_name_is_foreign_and_never_written_through(tiny_bundle, tmp_path):
    out = tmp_path / "lib"
    out.mkdir()
    (out / LIBRARY_INDEX).write_text("")
    target = tmp_path / "elsewhere.wav"
    target.write_bytes(b"not to be touched")
    planned = next(c.file_name for c in _planned(tmp_path, tiny_bundle, out))
    (out / planned).symlink_to(target)
    with pytest.raises(ValueError, match="not made by this library"):
        run_job(_job(tmp_path, tiny_bundle, out), progress=False)
    run_job(_job(tmp_path, tiny_bundle, out, overwrite_foreign=True), progress=False)
    assert target.read_bytes() == b"not to be touched" and not (out / planned).is_symlink()


def _planned(tmp_path, bundle, out):
    from reaudio.engine.jobs.generate_job import plan_clips
    from reaudio.engine.jobs.prompts import read_prompt_file

    job = _job(tmp_path, bundle, out)
    return plan_clips(job, read_prompt_file(job.prompts))


@pytest.mark.parametrize("kind", ["not-a-library", "root", "a-file"])
def test_out_must_be_new_empty_or_a_library(tiny_bundle, tmp_path, kind):
    if kind == "root":
        out = "/"
    elif kind == "a-file":
        out = tmp_path / "file.txt"
        out.write_text("x")
    else:
        out = tmp_path / "photos"
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"jpeg")
    proc = subprocess.run(
        [*CLI, "generate", str(_prompts(tmp_path, 1)), "--out", str(out), "--bundle", str(tiny_bundle), "--dry-run"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--out" in proc.stderr and ("not empty" in proc.stderr or "not a folder" in proc.stderr)
    if kind == "not-a-library":
        assert sorted(p.name for p in out.iterdir()) == ["holiday.jpg"]


def test_hidden_files_alone_leave_a_folder_empty(tiny_bundle, tmp_path):
    out = tmp_path / "fresh"
    out.mkdir()
    (out / ".DS_Store").write_bytes(b"finder")
    assert run_job(_job(tmp_path, tiny_bundle, out), progress=False).written == 2
    assert (out / ".DS_Store").read_bytes() == b"finder"


def test_kept_candidates_may_not_take_another_clip_s_name(tiny_bundle, tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a beep", "id": "x"}\n{"prompt": "a hum", "id": "x-c2"}\n')
    job = GenerateJob(
        prompts, tmp_path / "lib", tiny_bundle, name_template="{id}", candidates=2, keep_candidates=True, steps=2
    )
    with pytest.raises(ValueError, match=r"'x-c2.wav'.*x#0.*candidate 2.*x-c2#0"):
        run_job(job, progress=False)
    assert not (tmp_path / "lib" / LIBRARY_INDEX).exists()


def test_the_index_line_comes_before_the_file_so_an_unlisted_file_is_never_ours(tmp_path, monkeypatch):
    import os

    import numpy as np

    library = Library(tmp_path / "lib")
    index = tmp_path / "lib" / LIBRARY_INDEX
    listed_at_rename = []
    real_replace = os.replace

    def watch(src, dst):
        if str(dst).endswith("a.wav"):
            listed_at_rename.append(index.is_file() and '"file": "a.wav"' in index.read_text())
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", watch)
    try:
        entry = library.write("a.wav", np.zeros(800, np.float32), 8000, {"key": "a#0"})
    finally:
        library.close()
    assert listed_at_rename == [True]
    assert library.is_finished("a#0") and entry["bytes"] == (tmp_path / "lib" / "a.wav").stat().st_size
