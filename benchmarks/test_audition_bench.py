"""The audition page for a 1 000-clip library: first build (every thumbnail drawn) and a rebuild
(thumbnails cached, every file re-verified). Target: seconds, not minutes.

Clip count from ``REAUDIO_BENCH_AUDITION_CLIPS`` (default 1000; 2-s clips at 22.05 kHz, like the
default model's).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from reaudio.engine.jobs.audition import THUMBNAILS, build_audition
from reaudio.engine.jobs.library import Library

CLIPS = int(os.environ.get("REAUDIO_BENCH_AUDITION_CLIPS", "1000"))
SR = 22050


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("audition") / "lib"
    rng = np.random.default_rng(0)
    t = np.arange(2 * SR) / SR
    with Library(folder) as lib:
        for i in range(CLIPS):
            audio = (
                0.2 * np.sin(2 * np.pi * (100 + 7 * i) * t) * np.exp(-2 * t) + 0.01 * rng.standard_normal(len(t))
            ).astype(np.float32)
            lib.write(
                f"clip{i:04d}.wav",
                audio,
                SR,
                {
                    "key": f"clip{i:04d}#0",
                    "id": f"clip{i:04d}",
                    "prompt": f"test sound {i}",
                    "seed": i,
                    "duration_s": 2.0,
                },
            )
    return folder


def test_first_build(benchmark, library):
    def build():
        shutil.rmtree(library / THUMBNAILS, ignore_errors=True)
        return build_audition(library)

    page = benchmark.pedantic(build, rounds=1, iterations=1)
    assert len(list((library / THUMBNAILS).iterdir())) == CLIPS and page.is_file()


def test_rebuild(benchmark, library):
    build_audition(library)
    benchmark.pedantic(build_audition, args=(library,), rounds=3, iterations=1)
