"""``reaudio generate --ray`` on a local Ray instance (2 CPU workers, the tiny bundle)."""

from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from reaudio.engine.jobs.bulk import GenerateJob, run_job  # noqa: E402
from reaudio.engine.jobs.ray_bulk import run_job_on_ray  # noqa: E402

pytestmark = pytest.mark.ray
PROMPTS = [
    f"sound number {i}: " + w
    for i, w in enumerate(
        [
            "a short high beep",
            "a low electrical hum",
            "a burst of white noise",
            "a rising chirp",
            "rapid clicking",
            "a slow pulsing tone",
            "a beep and a hum",
            "noise then a chirp",
            "clicks in the rain",
            "a pulsing hum",
        ]
    )
]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _job(tiny_bundle, tmp_path, name):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return GenerateJob(
        prompts=prompts,
        out=tmp_path / name,
        bundle=tiny_bundle,
        batch_size=3,
        steps=3,
        duration=1.0,
        threads=1,
        backend="cpu",
    )


def _entries(folder):
    return [json.loads(line) for line in (folder / "library.jsonl").read_text().splitlines()]


def test_ray_job_matches_the_single_process_job(local_ray, tiny_bundle, tmp_path):
    job = _job(tiny_bundle, tmp_path, "ray")
    summary = run_job_on_ray(job, num_workers=2, progress=False)
    assert summary.written == len(PROMPTS) and not summary.failed
    single = run_job(_job(tiny_bundle, tmp_path, "single"), progress=False)
    assert single.written == len(PROMPTS)
    on_ray = {e["key"]: e["sha256"] for e in _entries(tmp_path / "ray")}
    local = {e["key"]: e["sha256"] for e in _entries(tmp_path / "single")}
    assert on_ray == local  # same seeds → byte-identical files
    # Resume: a rerun schedules nothing.
    again = run_job_on_ray(job, num_workers=2, progress=False)
    assert again.written == 0 and again.skipped == len(PROMPTS)


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(local_ray, tiny_bundle, tmp_path):
    marker = tmp_path / "crashed"
    job = _job(tiny_bundle, tmp_path, "lib")
    summary = run_job_on_ray(job, num_workers=2, progress=False, fail_once_marker=str(marker))
    assert marker.exists()  # a worker did die mid-batch
    keys = [e["key"] for e in _entries(tmp_path / "lib")]
    assert len(keys) == len(set(keys)) == len(PROMPTS) == summary.written
    assert sorted(p.name for p in (tmp_path / "lib").glob("*.wav")) == sorted(
        e["file"] for e in _entries(tmp_path / "lib")
    )


def test_ray_resumes_a_library_started_by_the_local_job(local_ray, tiny_bundle, tmp_path):
    job = _job(tiny_bundle, tmp_path, "lib")
    half = tmp_path / "half.txt"
    half.write_text("\n".join(PROMPTS[:4]) + "\n")
    from dataclasses import replace

    run_job(replace(job, prompts=half), progress=False)
    summary = run_job_on_ray(job, num_workers=2, progress=False)
    assert (summary.skipped, summary.written) == (4, len(PROMPTS) - 4)
    assert len(_entries(tmp_path / "lib")) == len(PROMPTS)


def test_ray_job_with_candidates_matches_the_single_process_job(local_ray, tiny_bundle, tmp_path):
    from dataclasses import replace

    job = replace(_job(tiny_bundle, tmp_path, "ray"), candidates=3)
    assert run_job_on_ray(job, num_workers=2, progress=False).written == len(PROMPTS)
    assert run_job(replace(job, out=tmp_path / "single"), progress=False).written == len(PROMPTS)
    on_ray = {e["key"]: (e["sha256"], e["candidates"]) for e in _entries(tmp_path / "ray")}
    local = {e["key"]: (e["sha256"], e["candidates"]) for e in _entries(tmp_path / "single")}
    assert on_ray.keys() == local.keys()
    for key in local:  # the same winner, the same ranking (scores to float round-off)
        assert on_ray[key][0] == local[key][0]
        assert [c["seed"] for c in on_ray[key][1]] == [c["seed"] for c in local[key][1]]


def test_ray_job_with_edits_matches_the_single_process_job(local_ray, tiny_bundle, tmp_path):
    """Inpainting and continuation rows (start clips relative to the prompt file) give the same bytes."""
    from dataclasses import replace

    import numpy as np
    import soundfile as sf

    rate = 8000
    t = np.arange(rate) / rate
    sf.write(tmp_path / "start.wav", (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), rate)
    rows = [
        {"prompt": PROMPTS[0], "init_audio": "start.wav", "inpaint": "0.2:0.5"},
        {"prompt": PROMPTS[1], "init_audio": "start.wav", "extend": 0.5},
        {"prompt": PROMPTS[2], "init_audio": "start.wav", "extend": -0.25},
        {"prompt": PROMPTS[3]},
    ]
    prompts = tmp_path / "edits.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = replace(_job(tiny_bundle, tmp_path, "ray"), prompts=prompts, duration=None)
    assert run_job_on_ray(job, num_workers=2, progress=False).written == len(rows)
    assert run_job(replace(job, out=tmp_path / "single"), progress=False).written == len(rows)
    on_ray = {
        e["key"]: (e["sha256"], e["settings"]["inpaint"], e["settings"]["extend"]) for e in _entries(tmp_path / "ray")
    }
    local = {
        e["key"]: (e["sha256"], e["settings"]["inpaint"], e["settings"]["extend"])
        for e in _entries(tmp_path / "single")
    }
    assert on_ray == local
    assert {(i, x) for _, i, x in local.values()} == {("0.2:0.5", None), (None, 0.5), (None, -0.25), (None, None)}


def test_ray_job_with_reference_clips_and_timelines_matches_the_single_process_job(local_ray, tiny_bundle, tmp_path):
    """Rows whose own clips are their neighbours, and timeline rows, give the same bytes on Ray as in one process."""
    from dataclasses import replace

    import numpy as np
    import soundfile as sf

    rate = 8000
    for i, hz in enumerate((330, 550)):
        t = np.arange(int(0.7 * rate)) / rate
        sf.write(tmp_path / f"ref{i}.wav", (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32), rate)
    rows = [
        {"prompt": PROMPTS[0], "reference": ["ref0.wav", "ref1.wav"]},
        {"prompt": PROMPTS[1], "reference": "ref1.wav", "reference_mode": "add", "reference_caption": "a tone"},
        {"prompt": PROMPTS[2]},
        {
            "prompt": PROMPTS[3],
            "duration": 2.0,
            "timeline": [{"at": 0, "prompt": PROMPTS[3]}, {"at": 1, "prompt": PROMPTS[4]}],
        },
    ]
    prompts = tmp_path / "refs.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    job = replace(_job(tiny_bundle, tmp_path, "ray"), prompts=prompts, duration=None)
    assert run_job_on_ray(job, num_workers=2, progress=False).written == len(rows)
    assert run_job(replace(job, out=tmp_path / "single"), progress=False).written == len(rows)
    on_ray = {e["key"]: (e["sha256"], e["neighbours"]) for e in _entries(tmp_path / "ray")}
    local = {e["key"]: (e["sha256"], e["neighbours"]) for e in _entries(tmp_path / "single")}
    assert on_ray == local
    assert sum(n["id"].startswith("reference:") for _, ns in local.values() for n in ns) == 3
