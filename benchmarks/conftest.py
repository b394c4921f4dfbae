"""Benchmark fixtures. Run: ``python -m pytest benchmarks`` (add ``--benchmark-json=out.json`` to keep numbers).

By default the benchmarks use a freshly made random `tiny` bundle. Point
``REAUDIO_BENCH_BUNDLE`` at another bundle (e.g. an `audioldm-s`-sized export)
to measure it instead.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def bench_bundle(tmp_path_factory) -> Path:
    env = os.environ.get("REAUDIO_BENCH_BUNDLE")
    if env:
        return Path(env)
    from reaudio.training.toy_bundle import make

    return make(tmp_path_factory.mktemp("bench"), fp16=False)


@pytest.fixture(scope="session")
def bench_engine(bench_bundle):
    from reaudio.engine.pipeline import Engine

    threads = int(os.environ.get("REAUDIO_BENCH_THREADS", "0")) or None
    return Engine.from_bundle(bench_bundle, backend=os.environ.get("REAUDIO_BENCH_BACKEND", "cpu"), threads=threads)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
