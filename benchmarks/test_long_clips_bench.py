"""Long clips: peak memory stays flat once the windows per graph call are full, and time grows
linearly with the clip (each duration in a fresh process, since peak RSS is per process).

Durations from ``REAUDIO_BENCH_LONG_SECONDS`` (default "10 60"); the bundle from
``REAUDIO_BENCH_BUNDLE`` (default: the random tiny bundle, 1-s window). For the
default model's 10/60/300-s table see ``benchmarks/long_clips.py scale``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SECONDS = [float(s) for s in os.environ.get("REAUDIO_BENCH_LONG_SECONDS", "10 60").split()]
ROOT = Path(__file__).resolve().parent.parent


def _measure(bundle: Path, seconds: float, one_shot: bool = False) -> dict:
    code = (
        f"import json; from benchmarks.long_clips import measure_one; "
        f"print(json.dumps(measure_one({str(bundle)!r}, {seconds}, {one_shot}, 10)))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_long_clip_memory_is_flat_and_time_linear(benchmark, bench_bundle):
    rows = benchmark.pedantic(lambda: [_measure(bench_bundle, s) for s in SECONDS], rounds=1, iterations=1)
    benchmark.extra_info["rows"] = rows
    short, long = rows[0], rows[-1]
    assert all(r["ok"] for r in rows)
    growth = long["peak_rss_mib"] - long["after_load_rss_mib"] - (short["peak_rss_mib"] - short["after_load_rss_mib"])
    # The clip's own arrays (latent, waveform, a few copies) grow with it; nothing else may.
    clip_mib = 6 * (long["seconds"] - short["seconds"]) * 48000 * 4 / 2**20  # float32 at up to 48 kHz
    assert growth < 50 + clip_mib, rows
    ratio = (long["wall_s"] / long["seconds"]) / (short["wall_s"] / short["seconds"])
    assert ratio < 1.5, rows  # seconds of compute per second of audio do not grow with length
