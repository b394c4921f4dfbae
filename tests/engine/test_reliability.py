"""Failures that stay one clip's (or one line's) problem, and reading only what is used."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf


def test_an_onnxruntime_allocation_failure_fails_only_its_batch(tiny_bundle):
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    from reaudio.engine.pipeline import Engine, Request

    engine = Engine.from_bundle(tiny_bundle, backend="cpu")
    decoder = engine.runners["decoder"]
    real_run = decoder.run

    def run(feeds):
        if feeds["latent"].shape[2] > 40:  # the long clip's batch: onnxruntime's own error type
            raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")
        return real_run(feeds)

    decoder.run = run
    results = engine.generate(
        [
            Request("rain", duration=0.5, steps=2),
            Request("wind", duration=8.0, steps=2, window=8.0),
            Request("fire", duration=0.5, steps=2, seed=1),
        ]
    )
    assert [r.ok for r in results] == [True, False, True]
    assert "Failed to allocate" in results[1].error


def test_db_add_reads_only_the_seconds_it_encodes(tiny_bundle, tmp_path, monkeypatch):
    from reaudio.engine.audio import audio_io
    from reaudio.engine.jobs.db_commands import add_clips, read_clip_list

    noise = 0.1 * np.random.default_rng(0).normal(size=(40 * 8000, 2))
    sf.write(tmp_path / "long.wav", noise.astype(np.float32), 8000)
    (tmp_path / "long.txt").write_text("forty seconds of stereo noise")
    read_frames = []
    real_read = audio_io.sf.read

    def spy(*args, **kwargs):
        data, rate = real_read(*args, **kwargs)
        read_frames.append(len(data))
        return data, rate

    monkeypatch.setattr(audio_io.sf, "read", spy)
    db = add_clips(tiny_bundle, read_clip_list(tmp_path))
    assert read_frames == [30 * 8000]  # not the 40 s of the file
    assert db.items[-1]["duration"] == 30.0


@pytest.mark.parametrize(
    "line, problem",
    [
        ('["a", "list"]', "not an object"),
        ('{"key": ["x"], "file": "a.wav", "bytes": 1, "sha256": "0"}', "key"),
        ('{"key": "a#0", "file": "a.wav", "sha256": "0"}', "bytes"),
        ('{"key": "a#0", "file": "a.wav", "bytes": 1, "sha256": "0", "settings": []}', "settings"),
    ],
)
def test_index_lines_of_the_wrong_shape_are_reported_not_fatal(tmp_path, caplog, line, problem):
    from reaudio.engine.jobs.audition import build_audition
    from reaudio.engine.jobs.library import LIBRARY_INDEX, Library

    (tmp_path / LIBRARY_INDEX).write_text(line + "\n")
    with caplog.at_level("WARNING"):
        library = Library(tmp_path, writable=False)
    assert library.entries == {}
    assert f"{LIBRARY_INDEX}:1:" in caplog.text and problem in caplog.text
    build_audition(tmp_path)  # the page is written, without the line
    assert (tmp_path / LIBRARY_INDEX).read_text() == line + "\n"


def _keep_job(tmp_path, bundle):
    from reaudio.engine.jobs.bulk import GenerateJob

    prompts = tmp_path / "p.txt"
    prompts.write_text("a beep\n")
    return GenerateJob(prompts, tmp_path / "lib", bundle, candidates=3, keep_candidates=True, steps=2, duration=0.5)


def _index(out):
    return [json.loads(line) for line in (out / "library.jsonl").read_text().splitlines()]


def test_a_clip_is_done_only_with_all_its_kept_candidates(tiny_bundle, tmp_path):
    from reaudio.engine.jobs.bulk import run_job

    job = _keep_job(tmp_path, tiny_bundle)
    run_job(job, progress=False)
    out = job.out
    entries = _index(out)
    keys = [e["key"] for e in entries]
    assert keys[-1].endswith("#0") and all("~c" in k for k in keys[:-1])  # the best is written last
    best = entries[-1]
    # A kill after the best but before a candidate (what an older order could leave): not done.
    lines = (out / "library.jsonl").read_text().splitlines()
    (out / "library.jsonl").write_text("\n".join(line for line in lines if "~c3" not in line) + "\n")
    (out / best["file"].replace(".wav", "-c3.wav")).unlink()
    summary = run_job(job, progress=False)
    assert summary.written == 1 and summary.skipped == 0
    # A kill after the candidates but before the best: not done either, and no key listed twice.
    lines = (out / "library.jsonl").read_text().splitlines()
    (out / "library.jsonl").write_text("\n".join(line for line in lines if best["key"] + '"' not in line) + "\n")
    (out / best["file"]).unlink()
    assert run_job(job, progress=False).written == 1
    keys = [e["key"] for e in _index(out)]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 3
    assert run_job(job, progress=False).skipped == 1


def test_every_input_that_changes_a_clip_or_its_name_is_a_resume_key(tiny_bundle, tmp_path, caplog):
    from dataclasses import replace

    from reaudio.engine.audio.postprocess import PostProcess
    from reaudio.engine.jobs.bulk import GenerateJob, run_job

    start = tmp_path / "hit.wav"
    sf.write(start, (0.3 * np.sin(np.arange(4000) / 5)).astype(np.float32), 8000)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a beep", "id": "b"}\n{"prompt": "a hum", "id": "h", "init_audio": "hit.wav"}\n')
    job = GenerateJob(prompts, tmp_path / "lib", tiny_bundle, backend="cpu", steps=2, duration=0.5)
    run_job(job, progress=False)
    assert run_job(job, progress=False).skipped == 2
    changes = [
        (replace(job, retrieval="caption"), "retrieval"),  # named only now; it was the bundle's default
        (replace(job, duration=0.75), "duration 0.5 → 0.75"),
        (replace(job, postprocess=PostProcess(trim_db=-30.0)), "trim_db None → -30.0"),
        (replace(job, name_template="{id}-take{variation}"), "file 'b-v0.wav' → 'b-take0.wav'"),
    ]
    for changed, why in changes:
        with pytest.raises(ValueError, match=why):
            run_job(changed, progress=False)
    # An explicit id keeps its sound only while its prompt is the same.
    hum = '{"prompt": "a hum", "id": "h", "init_audio": "hit.wav"}\n'
    prompts.write_text('{"prompt": "a loud beep", "id": "b"}\n' + hum)
    with pytest.raises(ValueError, match="prompt 'a beep' → 'a loud beep'"):
        run_job(job, progress=False)
    prompts.write_text('{"prompt": "a beep", "id": "b"}\n{"prompt": "a hum", "id": "h", "init_audio": "hit.wav"}\n')
    # An edited start clip of the same name is another start clip.
    sf.write(start, (0.3 * np.sin(np.arange(4000) / 3)).astype(np.float32), 8000)
    with pytest.raises(ValueError, match="h#0: init_sha256"):
        run_job(job, progress=False)
    assert run_job(replace(job, overwrite=True), progress=False).written == 1
    # A database changed since (db add) is reported, and the clips are kept.
    from reaudio.engine.jobs.db_commands import add_clips, read_clip_list

    mine = tmp_path / "mine"
    mine.mkdir()
    sf.write(mine / "k.wav", (0.3 * np.sin(np.arange(8000) / 2)).astype(np.float32), 8000)
    (mine / "k.txt").write_text("a kettle")
    add_clips(tiny_bundle, read_clip_list(mine))
    with caplog.at_level("WARNING"):
        assert run_job(job, progress=False).skipped == 2
    assert "2 finished clip(s) were made before the retrieval database last changed" in caplog.text


def _tmpfs(path, options):
    import subprocess

    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.decode().strip()[:100]})")


@pytest.mark.parametrize("options, cause", [("size=96k", "No space left on device"), ("ro", "Read-only file system")])
def test_a_full_or_read_only_disk_is_one_line(tiny_bundle, tmp_path, options, cause):
    import subprocess
    import sys

    disk = tmp_path / "disk"
    _tmpfs(disk, options)
    try:
        prompts = tmp_path / "p.txt"
        prompts.write_text("".join(f"sound {i}\n" for i in range(40)))
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "reaudio",
                "generate",
                str(prompts),
                "--out",
                str(disk / "lib"),
                "--bundle",
                str(tiny_bundle),
                "--steps",
                "1",
                "--duration",
                "2",
                "-q",
            ],
            capture_output=True,
            text=True,
        )
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
    assert proc.returncode == 2, proc.stderr
    assert cause in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_planning_embeds_prompts_in_bounded_chunks(tiny_bundle, monkeypatch):
    from reaudio.engine import planning
    from reaudio.engine.planning import Planner, Request

    planner = Planner.for_bundle(tiny_bundle)
    sizes = []
    real = planner._embed_text

    def spy(texts):
        sizes.append(len(texts))
        return real(texts)

    monkeypatch.setattr(planner, "_embed_text", spy)
    monkeypatch.setattr(planning, "PLAN_CHUNK", 16)
    resolved = planner.resolve_all([Request(f"sound {i}", seed=i) for i in range(50)])
    assert sizes == [16, 16, 16, 2] and len(resolved) == 50
    # The same plan as in one call.
    monkeypatch.setattr(planning, "PLAN_CHUNK", 256)
    again = planner.resolve_all([Request(f"sound {i}", seed=i) for i in range(50)])
    assert [r.samples for r in again] == [r.samples for r in resolved]


def test_a_stray_quote_in_a_csv_is_reported_not_merged(tmp_path):
    from reaudio.engine.jobs.prompts import PromptFileError, read_prompt_file

    path = tmp_path / "p.csv"
    path.write_text('prompt\n"a door creaks\na dog barks\nwind howls\nrain falls\n')
    with pytest.raises(PromptFileError, match=r"p.csv:2: a quoted field runs over 4 lines .*stray quote"):
        read_prompt_file(path)
    path.write_text('prompt,id\n"a door, creaking",d\nwind,w\n')  # balanced on its line: fine
    assert [r.prompt for r in read_prompt_file(path)] == ["a door, creaking", "wind"]


def test_the_true_peak_meter_streams_and_measures_as_one_pass(monkeypatch):
    import soxr

    from reaudio.engine.audio import loudness

    x = (0.5 * np.random.default_rng(1).standard_normal(3 * loudness.TRUE_PEAK_CHUNK + 17)).astype(np.float32)
    up = soxr.resample(x.astype(np.float64), 22050, 88200, quality="VHQ")
    whole = 20 * np.log10(max(np.abs(up).max(), np.abs(x).max()))
    seen = []
    real = soxr.ResampleStream.resample_chunk

    def spy(self, chunk, last=False):
        seen.append(len(chunk))
        return real(self, chunk, last=last)

    monkeypatch.setattr(soxr.ResampleStream, "resample_chunk", spy)
    assert loudness.true_peak_db(x, 22050) == whole
    assert max(seen) == loudness.TRUE_PEAK_CHUNK and len(seen) == 4


def test_long_clips_are_measured_a_chunk_at_a_time_as_pyloudnorm_measures_them():
    import pyloudnorm

    from reaudio.engine.audio import loudness

    rng = np.random.default_rng(3)
    n = int(loudness.STREAMED_LUFS_SECONDS * 8000) + 12345
    x = (0.1 * rng.standard_normal(n) * np.sin(np.arange(n) / 20000)).astype(np.float32)
    x[: n // 3] *= 1e-5  # a quiet third that the gates leave out
    expected = float(pyloudnorm.Meter(8000).integrated_loudness(x.astype(np.float64)))
    assert loudness.integrated_lufs(x, 8000) == expected
    assert loudness.integrated_lufs(np.zeros(n, np.float32), 8000) == loudness.SILENCE
