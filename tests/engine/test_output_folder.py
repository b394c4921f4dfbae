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
    with pytest.raises(ValueError, match=rf"not made by this library: {planned}.*--overwrite-foreign"):
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
    with pytest.raises(ValueError, match=r"'x-c2.wav' to x-c2#0 and x#0's candidate 2"):
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


def test_a_planted_lock_note_link_is_never_written_through_nor_shown(tiny_bundle, tmp_path):
    out = tmp_path / "lib"
    out.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("the root password\n")
    (out / ".reaudio.lock.holder").symlink_to(secret)
    run_job(_job(tmp_path, tiny_bundle, out), progress=False)
    assert secret.read_text() == "the root password\n"
    # A job refused by the lock shows another job's note only as reaudio writes it.
    with Library(out):
        (out / ".reaudio.lock.holder").unlink()
        (out / ".reaudio.lock.holder").symlink_to(secret)
        proc = subprocess.run(
            [*CLI, "generate", str(_prompts(tmp_path, 1)), "--out", str(out), "--bundle", str(tiny_bundle)],
            capture_output=True,
            text=True,
        )
    assert proc.returncode == 2 and "another process" in proc.stderr
    assert "password" not in proc.stderr and secret.read_text() == "the root password\n"


def test_a_lock_file_that_is_a_link_is_refused(tmp_path):
    out = tmp_path / "lib"
    out.mkdir()
    (out / ".reaudio.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="not a regular file"):
        Library(out)
    assert not (tmp_path / "elsewhere").exists()


def test_an_index_swapped_for_a_link_mid_job_is_not_written_through(tmp_path):
    import numpy as np

    out = tmp_path / "lib"
    library = Library(out)
    try:
        library.write("a.wav", np.zeros(800, np.float32), 8000, {"key": "a#0"})
        other = tmp_path / "other.jsonl"
        other.write_text("someone else's\n")
        (out / LIBRARY_INDEX).unlink()
        (out / LIBRARY_INDEX).symlink_to(other)
        with pytest.raises(ValueError, match="became a link"):
            library.write("b.wav", np.zeros(800, np.float32), 8000, {"key": "b#0"})
        with pytest.raises(ValueError, match="became a link"):
            library.drop(["a#0"])
    finally:
        library.close()
    assert other.read_text() == "someone else's\n" and not (out / "b.wav").exists()


def test_names_are_checked_with_the_partial_file_they_pass_through(tmp_path):
    from reaudio.engine.jobs.generate_job import plan_clips
    from reaudio.engine.jobs.library import PARTIAL_EXTRA_BYTES
    from reaudio.engine.jobs.prompts import read_prompt_file

    prompts = tmp_path / "p.jsonl"
    longest = 255 - PARTIAL_EXTRA_BYTES - len(".wav")
    for size, ok in ((longest, True), (longest + 1, False), (245, False)):
        prompts.write_text(json.dumps({"prompt": "x", "id": "a" * 120}) + "\n")
        template = "{id}" + "b" * (size - 120)
        job = GenerateJob(prompts, tmp_path / "lib", name_template=template)
        if ok:
            (clip,) = plan_clips(job, read_prompt_file(prompts))
            assert len(clip.file_name.encode()) + PARTIAL_EXTRA_BYTES == 255
        else:
            with pytest.raises(ValueError, match="partial file"):
                plan_clips(job, read_prompt_file(prompts))
