"""The second hostile-user pass's small defects, one test per group."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.jobs.bulk import GenerateJob, run_job

CLI = [sys.executable, "-m", "reaudio"]


def _prompts(tmp_path, text="a beep\n", name="p.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_bundle_that_is_a_file_is_one_clear_line(tmp_path):
    bundle = tmp_path / "bundle.zip"
    bundle.write_bytes(b"PK")
    proc = subprocess.run(
        [*CLI, "generate", str(_prompts(tmp_path)), "--out", str(tmp_path / "o"), "--bundle", str(bundle)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "a file, not a folder; a bundle is a folder holding manifest.json" in proc.stderr
    assert "Errno" not in proc.stderr and not (tmp_path / "o").exists()


def test_a_settings_error_leaves_no_new_folder_and_no_lock(tiny_bundle, tmp_path):
    out = tmp_path / "new"
    with pytest.raises(ValueError, match="steps=0"):
        run_job(GenerateJob(_prompts(tmp_path), out, tiny_bundle, steps=0), progress=False)
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ValueError, match="steps=0"):
        run_job(GenerateJob(_prompts(tmp_path), existing, tiny_bundle, steps=0), progress=False)
    assert existing.is_dir()  # a folder the user made stays


def test_seed_overflow_is_named_by_file_and_line(tmp_path):
    from reaudio.engine.jobs.generate_job import plan_clips
    from reaudio.engine.jobs.prompts import read_prompt_file

    path = _prompts(
        tmp_path, f'{{"prompt": "x"}}\n{{"prompt": "y", "seed": {2**63 - 1}, "variations": 2}}\n', "p.jsonl"
    )
    with pytest.raises(ValueError, match=r"p.jsonl:2: seed 9223372036854775807 and 2 variation\(s\) pass the largest"):
        plan_clips(GenerateJob(path, tmp_path / "o"), read_prompt_file(path))


def test_strength_without_a_start_clip_is_refused(tmp_path):
    from reaudio.engine.jobs.generate_job import plan_clips
    from reaudio.engine.jobs.prompts import read_prompt_file

    path = _prompts(tmp_path)
    with pytest.raises(ValueError, match="--strength 0.5 needs a start clip"):
        plan_clips(GenerateJob(path, tmp_path / "o", strength=0.5), read_prompt_file(path))


def test_nan_in_a_start_clip_is_found_when_the_prompt_file_is_read(tmp_path):
    from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file

    wave = np.zeros(8000, np.float32)
    wave[4000] = np.nan
    sf.write(tmp_path / "bad.wav", wave, 8000, subtype="FLOAT")
    path = _prompts(tmp_path, '{"prompt": "x", "init_audio": "bad.wav"}\n', "p.jsonl")
    with pytest.raises(PromptFileError, match=r"p.jsonl:1: init_audio 'bad.wav'.*NaN or infinite"):
        read_prompt_file(path)


def test_a_closed_pipe_ends_a_dry_run_quietly(tiny_bundle, tmp_path):
    prompts = _prompts(tmp_path, "".join(f"sound {i}\n" for i in range(2000)))
    shell = (
        f"{sys.executable} -m reaudio generate {prompts} --out {tmp_path / 'o'} --bundle {tiny_bundle} "
        "--dry-run --k 0 | head -2"
    )
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    "text, template, message",
    [
        ("a beep\n", "{id}:take{variation}", "Windows refuses such names"),
        ("a beep\n", "{id}-v{variation}.", "trailing space or dot"),
        ('{"prompt": "a", "id": "Door"}\n{"prompt": "b", "id": "door"}\n', "{id}", "one name without case"),
    ],
)
def test_names_windows_refuses_are_refused_up_front(tmp_path, text, template, message):
    from reaudio.engine.jobs.generate_job import plan_clips
    from reaudio.engine.jobs.prompts import read_prompt_file

    path = _prompts(tmp_path, text, "p.jsonl" if text.startswith("{") else "p.txt")
    with pytest.raises(ValueError, match=message):
        plan_clips(GenerateJob(path, tmp_path / "o", name_template=template), read_prompt_file(path))


def test_a_clip_file_replaced_by_a_link_is_not_done(tiny_bundle, tmp_path):
    out = tmp_path / "lib"
    job = GenerateJob(_prompts(tmp_path), out, tiny_bundle, steps=2, duration=0.5)
    run_job(job, progress=False)
    (entry,) = [json.loads(line) for line in (out / "library.jsonl").read_text().splitlines()]
    moved = tmp_path / "moved.wav"
    (out / entry["file"]).rename(moved)
    (out / entry["file"]).symlink_to(moved)  # the same bytes, through a link
    summary = run_job(job, progress=False)
    assert summary.written == 1 and not (out / entry["file"]).is_symlink()


def test_database_captions_are_bounded_text(tmp_path):
    from reaudio.engine.jobs.db_commands import ClipListError, read_clip_list

    sf.write(tmp_path / "a.wav", np.zeros(800, np.float32), 8000)
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"audio": "a.wav", "caption": "x" * 1001, "id": "a"})
        + "\n"
        + json.dumps({"audio": "a.wav", "caption": "nul\u0000here", "id": "b"})
        + "\n"
    )
    with pytest.raises(ClipListError) as err:
        read_clip_list(tmp_path / "list.jsonl")
    text = str(err.value)
    assert "is 1001 characters long" in text and "holds a NUL character" in text


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["files"].update({"../outside.bin": "0" * 64}), r"files\['../outside.bin'\].*inside the bundle"),
        (lambda m: m["retrieval"].update(caption_tokens=10**9), "retrieval.caption_tokens=1000000000; valid"),
    ],
)
def test_crafted_manifest_entries_are_refused_before_anything_is_read(tiny_bundle, edit, message):
    from reaudio.engine.bundle.manifest import BundleError, read_bundle_manifest

    path = tiny_bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=message):
        read_bundle_manifest(tiny_bundle, verify=False)


def test_deleting_checksums_does_not_turn_verification_off(tiny_bundle, tmp_path):
    from reaudio.engine.jobs.db_commands import add_clips, read_clip_list
    from reaudio.engine.retrieval.database import CHECKSUMS, RetrievalDB

    sf.write(tmp_path / "k.wav", (0.3 * np.sin(np.arange(8000) / 2)).astype(np.float32), 8000)
    (tmp_path / "k.txt").write_text("a kettle")
    add_clips(tiny_bundle, read_clip_list(tmp_path))  # a generation this reaudio wrote
    db = RetrievalDB(tiny_bundle / "retrieval")
    (db.generation / CHECKSUMS).unlink()
    with pytest.raises(ValueError, match="checksums.json: missing, though this generation was written with it"):
        RetrievalDB(tiny_bundle / "retrieval", verify=True)


def test_an_unreachable_loudness_target_is_said(tiny_bundle, tmp_path, caplog):
    from reaudio.engine.audio.postprocess import PostProcess

    job = GenerateJob(
        _prompts(tmp_path),
        tmp_path / "lib",
        tiny_bundle,
        steps=2,
        duration=0.5,
        postprocess=PostProcess(loudness_lufs=0.0),
    )
    with caplog.at_level("WARNING"):
        run_job(job, progress=False)
    assert "short of the 0 LUFS target" in caplog.text and "full scale" in caplog.text
