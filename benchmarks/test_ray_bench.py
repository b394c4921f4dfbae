"""Ray scaling: clips/s of ``generate --ray`` with 1 and 2 local CPU workers (one engine thread each).

    python -m pytest benchmarks/test_ray_bench.py -m ray --benchmark-json=ray.json

Each round writes a fresh library, so every clip is generated (nothing is
skipped by resume). Ray's start-up is paid once, outside the timed rounds.
"""

from __future__ import annotations

import itertools
import os

import pytest

ray = pytest.importorskip("ray")

from reaudio.engine.jobs.bulk import GenerateJob  # noqa: E402
from reaudio.engine.jobs.ray_bulk import run_job_on_ray  # noqa: E402

pytestmark = pytest.mark.ray
CLIPS = int(os.environ.get("REAUDIO_BENCH_RAY_CLIPS", "32"))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_clips_per_second(benchmark, local_ray, bench_bundle, tmp_path, workers):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"sound {i}: a short high beep and a low hum\n" for i in range(CLIPS)))
    counter = itertools.count()

    def run():
        job = GenerateJob(
            prompts=prompts,
            out=tmp_path / f"lib{next(counter)}",
            bundle=bench_bundle,
            batch_size=4,
            steps=10,
            duration=4.0,
            threads=1,
            backend="cpu",
        )
        return run_job_on_ray(job, num_workers=workers, progress=False)

    run()  # warm-up: actors start, bundles load
    summary = benchmark.pedantic(run, rounds=3, iterations=1)
    assert summary.written == CLIPS
    benchmark.extra_info["clips_per_second"] = CLIPS / benchmark.stats.stats.median
    benchmark.extra_info["workers"] = workers
