"""Per-stage and end-to-end engine throughput (pytest-benchmark; medians are what to report)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.conftest import peak_rss_mb
from reaudio.engine.denoising.loop import step_feeds
from reaudio.engine.denoising.sampler import make_plan
from reaudio.engine.pipeline import Request

BATCHES = [1, 4, 8]
SECONDS = 5.0
STEPS = 10


def _conditions(engine, batch: int):
    prompts = [f"sound effect number {i}" for i in range(batch)]
    r = [engine.resolve(Request(p, duration=SECONDS, steps=STEPS)) for p in prompts]
    conditions, _, _ = engine._conditions(r)
    return r, conditions


@pytest.mark.parametrize("batch", BATCHES)
def test_text_encoder(benchmark, bench_engine, batch):
    prompts = [f"a dog barks in the distance, take {i}" for i in range(batch)]
    benchmark(bench_engine.embed_text, prompts)
    benchmark.extra_info["peak_rss_mb"] = peak_rss_mb()


@pytest.mark.parametrize("batch", BATCHES)
def test_denoiser_step(benchmark, bench_engine, batch):
    resolved, conditions = _conditions(bench_engine, batch)
    plan = make_plan(bench_engine.manifest.schedule, "ddim", STEPS)
    latent = bench_engine._initial_latents(resolved)
    feeds = {"latent": latent, "prev_x0": np.zeros_like(latent), **conditions, **step_feeds(plan, 3, batch)}
    benchmark(bench_engine.runners["denoiser"].run, feeds)
    benchmark.extra_info["peak_rss_mb"] = peak_rss_mb()


@pytest.mark.parametrize("batch", BATCHES)
def test_decoder(benchmark, bench_engine, batch):
    resolved, _ = _conditions(bench_engine, batch)
    latent = bench_engine._initial_latents(resolved)
    benchmark(bench_engine.runners["decoder"].run, {"latent": latent})
    benchmark.extra_info["peak_rss_mb"] = peak_rss_mb()


@pytest.mark.parametrize("batch", BATCHES)
def test_end_to_end(benchmark, bench_engine, batch):
    requests = [Request(f"sound effect number {i}", duration=SECONDS, steps=STEPS, seed=i) for i in range(batch)]
    results = benchmark.pedantic(
        bench_engine.generate, args=(requests,), kwargs={"batch_size": batch}, rounds=3, warmup_rounds=1
    )
    assert all(r.ok for r in results)
    median = benchmark.stats.stats.median
    benchmark.extra_info["clips_per_s"] = batch / median
    benchmark.extra_info["real_time_factor"] = batch * SECONDS / median
    benchmark.extra_info["peak_rss_mb"] = peak_rss_mb()
