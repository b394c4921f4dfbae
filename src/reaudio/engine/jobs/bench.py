"""Latency benchmark of a loaded engine: per-stage percentiles, throughput, memory, the machine.

``reaudio bench`` prints :func:`format_table` of :func:`run_bench`; the benchmarks in
``benchmarks/`` call the same functions, so a user's figures and ours are measured alike.
Stage times come from wrapping the engine's runners and retrieval database for the
measured runs; nothing in the engine itself changes.
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from ..pipeline import Engine, Request
from ..stages.backends import cpu_flags, cpu_model

PROMPTS = (
    "footsteps on gravel",
    "a wooden door creaks open",
    "rain falls on a tin roof",
    "a dog barks twice",
    "glass shatters on stone",
    "wind howls through a gap",
    "a crackling campfire",
    "a bell tolls once",
)
#: Stages reported, in pipeline order: runner name or "retrieval" → the row's label.
STAGES = {"text_encoder": "text encoder", "retrieval": "retrieval", "denoiser": "denoiser step", "decoder": "decoder"}


@dataclass(frozen=True)
class BenchSettings:
    """What is measured: each batch size gets ``warmup`` unmeasured runs, then ``repeats`` timed ones.

    Attributes:
        batch_sizes: clips per engine batch, one measurement each.
        duration: seconds per clip.
        steps: denoising steps per clip.
        repeats, warmup: timed and untimed runs per batch size.
        sampler, guidance: None keeps the bundle's defaults.
    """

    batch_sizes: tuple[int, ...] = (1, 8)
    duration: float = 4.0
    steps: int = 25
    repeats: int = 3
    warmup: int = 1
    sampler: str | None = None
    guidance: float | None = None

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes={self.batch_sizes}; give one or more sizes ≥ 1")
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"repeats={self.repeats}, warmup={self.warmup}; need repeats ≥ 1 and warmup ≥ 0")
        if not 0 < self.duration <= 600:
            raise ValueError(f"duration={self.duration}; valid: above 0 up to 600 seconds")

    def requests(self, batch: int) -> list[Request]:
        return [
            Request(
                PROMPTS[i % len(PROMPTS)],
                duration=self.duration,
                steps=self.steps,
                seed=i,
                sampler=self.sampler,
                guidance=self.guidance,
            )
            for i in range(batch)
        ]


@dataclass
class BatchFigures:
    """One batch size's measurements (seconds unless named otherwise)."""

    batch: int
    runs_s: list[float]
    stages: dict[str, list[float]] = field(default_factory=dict)
    peak_rss_mb: float | None = None

    def summary(self, duration: float) -> dict:
        wall = float(np.median(self.runs_s))
        return {
            "batch": self.batch,
            "run_s": {"p50": wall, "p95": percentile(self.runs_s, 95), "runs": self.runs_s},
            "clips_per_s": self.batch / wall,
            # Processing time per second of audio made; below 1 is faster than real time.
            "real_time_factor": wall / (self.batch * duration),
            "stages": {
                name: {"p50": percentile(v, 50), "p95": percentile(v, 95), "calls": len(v)}
                for name, v in self.stages.items()
                if v
            },
            "peak_rss_mb": self.peak_rss_mb,
        }


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else float("nan")


class _TimedRunner:
    """A runner whose calls are timed into ``sink``."""

    def __init__(self, runner, sink: list[float]) -> None:
        self.runner, self.sink = runner, sink
        for name in ("spec", "input_dtypes", "output_names", "session"):
            if hasattr(runner, name):
                setattr(self, name, getattr(runner, name))

    def run(self, feeds):
        start = time.perf_counter()
        try:
            return self.runner.run(feeds)
        finally:
            self.sink.append(time.perf_counter() - start)


@contextmanager
def timed_stages(engine: Engine):
    """Within the block, every stage call of ``engine`` is timed; yields {stage: [seconds per call]}."""
    calls: dict[str, list[float]] = defaultdict(list)
    runners = dict(engine.runners)
    # In place: the engine's denoiser strategy reads its runner from this mapping.
    engine.runners.update({name: _TimedRunner(r, calls[name]) for name, r in runners.items()})
    db_methods = {}
    if engine.db is not None:
        for method in ("search", "gather"):
            original = getattr(engine.db, method)
            db_methods[method] = original

            def timed(*args, _original=original, **kwargs):
                start = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    calls["retrieval"].append(time.perf_counter() - start)

            setattr(engine.db, method, timed)
    try:
        yield calls
    finally:
        engine.runners.update(runners)
        for method in db_methods:
            delattr(engine.db, method)  # the class's method shows through again


def _reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: clear_refs 5); False where the OS cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb(window: bool) -> float:
    if window:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process lifetime peak


def measure_batch(engine: Engine, settings: BenchSettings, batch: int) -> BatchFigures:
    """Warm up, then time ``settings.repeats`` runs of ``batch`` clips with per-stage times."""
    requests = settings.requests(batch)
    for _ in range(settings.warmup):
        _check(engine.generate(requests, batch_size=batch))
    figures = BatchFigures(batch, [])
    window = _reset_peak_rss()
    for _ in range(settings.repeats):
        _timed_run(engine, requests, batch, figures)
    _keep_stages(engine, figures)
    figures.peak_rss_mb = round(_peak_rss_mb(window), 1)
    return figures


def _timed_run(engine: Engine, requests: list[Request], batch: int, figures: BatchFigures) -> list:
    with timed_stages(engine) as calls:
        start = time.perf_counter()
        results = engine.generate(requests, batch_size=batch)
        figures.runs_s.append(time.perf_counter() - start)
    _check(results)
    # Per run, except the denoiser: each of its calls is one step.
    for name in ("text_encoder", "retrieval", "decoder"):
        figures.stages.setdefault(name, []).append(sum(calls.get(name, [])))
    figures.stages.setdefault("denoiser", []).extend(calls.get("denoiser", []))
    return results


def _keep_stages(engine: Engine, figures: BatchFigures) -> None:
    figures.stages = {name: figures.stages[name] for name in STAGES if figures.stages.get(name)}
    if engine.db is None:
        figures.stages.pop("retrieval", None)


def compare_engines(
    engines: dict[str, Engine], settings: BenchSettings, progress: Callable[[str], None] | None = None
) -> dict:
    """Several engines (backend and precision configurations) side by side: per batch size each is
    warmed up, then their timed runs take turns (so load on the machine falls on all alike); medians,
    speed-up over the first, and each one's audio against the first's (SNR, log-mel distance)."""
    from ..audio.frontend import log_mel

    first = next(iter(engines))
    rows = []
    for batch in settings.batch_sizes:
        if progress:
            progress(f"batch {batch}: {len(engines)} configurations, {settings.repeats} turns each")
        requests = settings.requests(batch)
        audio, figures = {}, {label: BatchFigures(batch, []) for label in engines}
        for engine in engines.values():
            for _ in range(settings.warmup):
                _check(engine.generate(requests, batch_size=batch))
        for _ in range(settings.repeats):
            for label, engine in engines.items():
                audio[label] = [r.waveform for r in _timed_run(engine, requests, batch, figures[label])]
        row = {"batch": batch, "configs": {}}
        mel = engines[first].manifest.mel
        for label, engine in engines.items():
            _keep_stages(engine, figures[label])
            summary = figures[label].summary(settings.duration)
            ref, got = np.concatenate(audio[first]), np.concatenate(audio[label])
            error = float(np.sum((ref.astype(np.float64) - got) ** 2))
            summary["speedup"] = float(np.median(figures[first].runs_s)) / summary["run_s"]["p50"]
            summary["snr_db_vs_first"] = float("inf") if error == 0 else 10 * float(np.log10(np.sum(ref**2.0) / error))
            summary["log_mel_l1_vs_first"] = float(
                np.mean(
                    [np.mean(np.abs(log_mel(a, mel) - log_mel(b, mel))) for a, b in zip(audio[first], audio[label])]
                )
            )
            row["configs"][label] = summary
        rows.append(row)
    return {
        "bundle": {"path": engines[first].bundle.name, "name": engines[first].manifest.name},
        "configs": {
            label: {"backend": e.backend, "precision": e.precision, "stage_precision": e.stage_precision}
            for label, e in engines.items()
        },
        "settings": {"duration": settings.duration, "steps": settings.steps, "repeats": settings.repeats},
        "machine": machine_info(engines[first]),
        "results": rows,
    }


def format_comparison(report: dict) -> str:
    """The comparison as a terminal table: one line per configuration and batch size."""
    m, s = report["machine"], report["settings"]
    lines = [
        f"{report['bundle']['name']}: {s['duration']:g}-s clips, {s['steps']} steps, median of {s['repeats']} "
        f"interleaved runs; {describe_cpu(m)}; {m['date']}",
        "",
        f"{'batch':>5}  {'configuration':<22} {'run s':>8} {'clips/s':>8} {'speed-up':>9} "
        f"{'step ms':>8} {'decoder ms':>11} {'SNR dB':>7} {'log-mel':>8}",
    ]
    for row in report["results"]:
        for label, c in row["configs"].items():
            stages = c["stages"]
            step = stages.get("denoiser", {}).get("p50", float("nan")) * 1000
            decoder = stages.get("decoder", {}).get("p50", float("nan")) * 1000
            lines.append(
                f"{row['batch']:>5}  {label:<22} {c['run_s']['p50']:>8.2f} {c['clips_per_s']:>8.3f} "
                f"{c['speedup']:>8.2f}× {step:>8.1f} {decoder:>11.1f} {c['snr_db_vs_first']:>7.1f} "
                f"{c['log_mel_l1_vs_first']:>8.3f}"
            )
    lines.append("")
    lines.append("speed-up, SNR and log-mel distance against the first configuration")
    for label, c in report["configs"].items():
        per = ", ".join(f"{k} {v}" for k, v in c["stage_precision"].items() if k in STAGES)
        lines.append(f"  {label}: {c['backend']}, {per}")
    return "\n".join(lines)


def _check(results) -> None:
    failed = [r for r in results if r.error]
    if failed:
        raise RuntimeError(f"benchmark run failed: {failed[0].error}")


def run_bench(engine: Engine, settings: BenchSettings, progress: Callable[[str], None] | None = None) -> dict:
    """Measure every batch size of ``settings``; a JSON-ready report with the machine it ran on."""
    rows = []
    for batch in settings.batch_sizes:
        if progress:
            progress(
                f"batch {batch}: {settings.warmup} warm-up + {settings.repeats} timed run(s) of "
                f"{batch} × {settings.duration:g} s, {settings.steps} steps"
            )
        rows.append(measure_batch(engine, settings, batch).summary(settings.duration))
    return {
        "bundle": {"path": engine.bundle.name, "name": engine.manifest.name, "family": engine.manifest.family},
        "backend": engine.backend,
        "precision": engine.precision,
        "stage_precision": engine.stage_precision,
        "settings": {
            "duration": settings.duration,
            "steps": settings.steps,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "sampler": settings.sampler,
            "guidance": settings.guidance,
        },
        "machine": machine_info(engine),
        "results": rows,
    }


def machine_info(engine: Engine | None = None) -> dict:
    """The CPU, threads, GPU and library versions behind a measurement."""
    import onnxruntime as ort

    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }
    if engine is not None:
        session = getattr(engine.runners.get("denoiser"), "session", None)
        if session is not None:
            intra = session.get_session_options().intra_op_num_threads
            info["threads"] = intra or os.cpu_count()  # 0 means onnxruntime's default: one per core
            info["session_providers"] = session.get_providers()
    gpu = _gpu()
    if gpu:
        info["gpu"] = gpu
    return info


def describe_cpu(machine: dict) -> str:
    """The CPU's model with the flags that decide its best precision, e.g. 'AMD EPYC (avx512_bf16, no AMX)'."""
    flags = machine.get("cpu_flags")
    if flags is None:  # a report from before the flags were recorded
        return machine["cpu"]
    amx = [] if any(f.startswith("amx") for f in flags) else ["no AMX"]
    return f"{machine['cpu']} ({', '.join(flags + amx) or 'no listed flags'})"


def _gpu() -> list[dict] | None:
    """nvidia-smi's view of the GPUs (name, driver, memory), where it is installed."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for line in out.strip().splitlines():
        name, driver, total, used = (part.strip() for part in line.split(","))
        gpus.append({"name": name, "driver": driver, "memory_total_mb": float(total), "memory_used_mb": float(used)})
    return gpus


def _stage_precision(report: dict) -> str:
    """ "denoiser bf16, decoder bf16, ..." (stages the bench times first), or one word when all agree."""
    per = report.get("stage_precision") or {}
    if len(set(per.values())) <= 1:
        return next(iter(per.values()), report["precision"])
    return ", ".join(f"{k} {v}" for k, v in sorted(per.items(), key=lambda kv: kv[0] not in STAGES))


def format_table(report: dict) -> str:
    """The report as a terminal table: one block per batch size, milliseconds per stage."""
    m = report["machine"]
    gpu = ", ".join(g["name"] for g in m.get("gpu", [])) or "none"
    s = report["settings"]
    lines = [
        f"{report['bundle']['name']} ({report['bundle']['family']}) on {report['backend']}, "
        f"precision {report['precision']} ({_stage_precision(report)}); {s['duration']:g}-s clips, {s['steps']} steps, "
        f"median of {s['repeats']} after {s['warmup']} warm-up",
        f"machine: {describe_cpu(m)}, {m.get('threads', m['logical_cores'])} thread(s); GPU: {gpu}; "
        f"onnxruntime {m['onnxruntime']}; {m['date']}",
        "",
        f"{'batch':>5}  {'stage':<15} {'p50 ms':>10} {'p95 ms':>10}",
    ]
    for row in report["results"]:
        for name, label in STAGES.items():
            if name in row["stages"]:
                st = row["stages"][name]
                per = " (per run)" if name != "denoiser" else ""
                lines.append(f"{row['batch']:>5}  {label:<15} {st['p50'] * 1e3:>10.1f} {st['p95'] * 1e3:>10.1f}{per}")
        lines.append(
            f"{row['batch']:>5}  {'whole run':<15} {row['run_s']['p50'] * 1e3:>10.1f} "
            f"{row['run_s']['p95'] * 1e3:>10.1f}"
        )
        rss = f", peak RSS {row['peak_rss_mb']:.0f} MB" if row["peak_rss_mb"] else ""
        lines.append(
            f"{'':>5}  {row['clips_per_s']:.2f} clips/s, real-time factor "
            f"{row['real_time_factor']:.3f} ({1 / row['real_time_factor']:.1f}× real time){rss}"
        )
    return "\n".join(lines)
