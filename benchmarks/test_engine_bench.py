"""Per-stage and end-to-end engine throughput, measured by ``reaudio bench``'s own timers.

Each test is one pytest-benchmark round of :func:`measure_batch` (a warm-up run, then timed
runs with every stage call timed); the whole-run, per-stage and memory figures go into the
benchmark's ``extra_info`` (``--benchmark-json=out.json`` keeps them). Medians are what to report.
"""

from __future__ import annotations

import pytest

from reaudio.engine.jobs.bench import BenchSettings, measure_batch

BATCHES = [1, 4, 8]
SETTINGS = BenchSettings(duration=5.0, steps=10, repeats=3, warmup=1)


@pytest.mark.parametrize("batch", BATCHES)
def test_engine_stages(benchmark, bench_engine, batch):
    figures = benchmark.pedantic(measure_batch, args=(bench_engine, SETTINGS, batch), rounds=1, iterations=1)
    summary = figures.summary(SETTINGS.duration)
    assert {"text_encoder", "denoiser", "decoder"} <= set(summary["stages"])
    assert summary["stages"]["denoiser"]["calls"] >= SETTINGS.repeats * SETTINGS.steps  # more with windows
    benchmark.extra_info.update(
        run_s_p50=summary["run_s"]["p50"],
        clips_per_s=summary["clips_per_s"],
        real_time_factor=summary["real_time_factor"],
        peak_rss_mb=summary["peak_rss_mb"],
        **{f"{name}_p50_s": s["p50"] for name, s in summary["stages"].items()},
        **{f"{name}_p95_s": s["p95"] for name, s in summary["stages"].items()},
    )
