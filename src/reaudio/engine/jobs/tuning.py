"""``reaudio tune``: each stage's precision on each CPU backend — the fastest that keeps the sound.

Quality is measured against fp32 onnxruntime on the inputs each stage gets while the bundle
generates a few prompts; a precision passes when the stage stays within its bar
(:data:`QUALITY_BARS`). Speed is measured here, a stage at a time (median of repeats after a
warm-up). The choice is written into the bundle (``manifest.tuned_precision``, what ``--precision
auto`` runs on that backend) with the numbers behind it (``precision_report.json``, with the CPU
that measured them); ``--backend auto`` takes OpenVINO where that report, made on this CPU model,
found it faster than onnxruntime.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..bundle.manifest import TUNING_REPORT, BundleManifest, read_bundle_manifest, write_bundle_manifest
from ..stages.backends import OrtRunner, backend_cache

log = logging.getLogger(__name__)

CPU_BACKENDS = ("cpu", "openvino")


@dataclass(frozen=True)
class QualityBar:
    """How far a stage may move from fp32: ``metric`` of ``output`` against fp32's.

    Attributes:
        output: the graph output measured.
        metric: "snr_db" (the output's SNR over all inputs together, at least ``limit``) or
            "log_mel_l1" (mean absolute log-mel difference per clip of a waveform, at most ``limit``).
        limit: the bar.
        why: the listening measurement the bar rests on.
    """

    output: str
    metric: str
    limit: float
    why: str

    def passes(self, value: float) -> bool:
        return value >= self.limit if self.metric == "snr_db" else value <= self.limit


#: The bars rest on FAD of the default model on its 100 test captions at 44.1 kHz (2-vCPU AMD EPYC,
#: 2026-12-07, docs/speed.md): fp32 165.1; OpenVINO bf16 in every stage 163.7 (text embedding at
#: 44.5 dB, x0 at 32.1 dB, decoder log-mel 0.114 as this pass measures them); int8 after the
#: sensitivity pass 163.3 (x0 30.7 dB); every UNet convolution in int8 207.4 (x0 13.8 dB). Since mel
#: matching (fp32 155.8) OpenVINO bf16 runs the decoder's tail after the vocoder in f32: log-mel 0.102, FAD 154.7.
QUALITY_BARS = {
    "text_encoder": QualityBar("text_embedding", "snr_db", 40.0, "bf16 (44.5 dB) scored fp32's FAD"),
    "denoiser": QualityBar("x0", "snr_db", 30.0, "bf16 (32.1 dB), pass-kept int8 (30.7 dB): fp32's FAD"),
    "decoder": QualityBar("waveform", "log_mel_l1", 0.12, "bf16 (0.114) scored fp32's FAD"),
}

TUNING_PROMPTS = (
    "rain falls on a tin roof",
    "a dog barks twice",
    "glass shatters on a stone floor",
    "footsteps on gravel",
)


@dataclass(frozen=True)
class TuneSettings:
    """How ``reaudio tune`` measures.

    Attributes:
        backends: CPU backends to tune ("cpu", "openvino"; those not installed are skipped).
        duration: seconds per clip of the recorded generation.
        steps: denoising steps recorded (every third step's input is scored).
        repeats: timed calls per stage and precision (median).
        threads: CPU threads (None: all cores).
    """

    backends: tuple[str, ...] = CPU_BACKENDS
    duration: float = 4.0
    steps: int = 12
    repeats: int = 5
    threads: int | None = None


def candidates(manifest: BundleManifest, stage: str, backend: str) -> list[str]:
    """The precisions worth measuring for ``stage`` on ``backend``: fp32, bf16 on OpenVINO, int8
    where the bundle has the stage's int8 graph (on OpenVINO also int8-bf16: the rest in bf16)."""
    spec = manifest.stages[stage]
    openvino = backend == "openvino"
    out = ["fp32", "bf16"] if openvino else ["fp32"]
    if spec.int8_file:
        out += ["int8", "int8-bf16"] if openvino else ["int8"]
    return out


def record_inputs(bundle: Path, settings: TuneSettings) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """What the tuned stages get while the fp32 engine generates :data:`TUNING_PROMPTS` as one batch,
    and how many calls each stage took."""
    from ..pipeline import Engine, Request

    engine = Engine.from_bundle(bundle, backend="cpu", threads=settings.threads, precision="fp32")
    kept: dict[str, list[dict]] = {stage: [] for stage in QUALITY_BARS if stage in engine.runners}

    class Recording:
        def __init__(self, runner, into: list) -> None:
            self.runner, self.into = runner, into
            self.spec, self.input_dtypes = runner.spec, runner.input_dtypes

        def run(self, feeds):
            self.into.append({k: np.array(v) for k, v in feeds.items()})
            return self.runner.run(feeds)

    for stage, into in kept.items():
        engine.runners[stage] = Recording(engine.runners[stage], into)
    requests = [
        Request(p, seed=i, steps=settings.steps, duration=settings.duration) for i, p in enumerate(TUNING_PROMPTS)
    ]
    for result in engine.generate(requests, batch_size=len(requests)):
        if result.error:
            raise RuntimeError(f"tuning prompt {result.request.prompt!r} failed: {result.error}")
    calls = {stage: len(into) for stage, into in kept.items()}
    kept["denoiser"] = kept["denoiser"][1::3]  # steps along the whole schedule, not all of them
    return kept, calls


def stage_snr_db(reference: list[list[np.ndarray]], other: list[list[np.ndarray]], output: int) -> float:
    """SNR (dB) of output ``output`` over all inputs together: error energy against signal energy
    summed over the inputs, so one near-silent input does not decide it."""
    signal = sum(float(np.sum(np.square(r[output], dtype=np.float64))) for r in reference)
    error = sum(float(np.sum(np.square(r[output].astype(np.float64) - o[output]))) for r, o in zip(reference, other))
    return float("inf") if error == 0 else 10 * float(np.log10(signal / error))


def _measure(bar: QualityBar, output: int, reference: list[list], got: list[list], mel) -> float:
    if bar.metric == "snr_db":
        return stage_snr_db(reference, got, output)
    from ..audio.frontend import log_mel

    diffs = [
        float(np.mean(np.abs(log_mel(a, mel) - log_mel(b, mel))))
        for r, g in zip(reference, got)
        for a, b in zip(r[output], g[output])
    ]
    return float(np.mean(diffs))


def _runner(bundle: Path, manifest: BundleManifest, stage: str, backend: str, precision: str, threads):
    from ..stages.backends import stage_file

    spec = manifest.stages[stage]
    path = bundle / stage_file(spec, backend, precision)
    if backend == "cpu":
        return OrtRunner(path, spec, ["CPUExecutionProvider"], threads)
    from ..stages.openvino_runner import OpenVinoRunner, openvino_core

    core = openvino_core(backend_cache(bundle, "openvino"))
    return OpenVinoRunner(core, path, spec, precision, threads)


def _median_call(runner, feeds: dict, repeats: int) -> float:
    runner.run(feeds)  # warm-up: OpenVINO and onnxruntime settle their kernels on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        runner.run(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def available_backends(asked: tuple[str, ...]) -> list[str]:
    import importlib.util

    return [b for b in asked if b != "openvino" or importlib.util.find_spec("openvino") is not None]


def tune(bundle: Path, settings: TuneSettings, progress: Callable[[str], None] = log.info) -> dict:
    """Measure every (backend, stage, precision), choose per backend and stage, and write the choice
    and the report into ``bundle``. Returns the report."""
    from .bench import machine_info

    manifest = read_bundle_manifest(bundle)
    backends = available_backends(settings.backends)
    if not backends:
        raise ValueError(f"none of the backends {', '.join(settings.backends)} is installed")
    progress(f"recording each stage's inputs: {len(TUNING_PROMPTS)} clips of {settings.duration:g} s, fp32")
    inputs, calls = record_inputs(bundle, settings)
    # Calls per batch at the bundle's own step count (long clips take several denoiser calls a step).
    calls["denoiser"] = calls["denoiser"] * manifest.defaults.steps / settings.steps
    measured: dict[str, dict[str, dict[str, dict]]] = {b: {} for b in backends}
    for stage, feeds in inputs.items():
        bar = QUALITY_BARS[stage]
        spec = manifest.stages[stage]
        output = [o.name for o in spec.outputs].index(bar.output)
        reference_runner = OrtRunner(bundle / spec.file, spec, ["CPUExecutionProvider"], settings.threads)
        reference = [reference_runner.run(f) for f in feeds]
        for backend in backends:
            for precision in candidates(manifest, stage, backend):
                runner = _runner(bundle, manifest, stage, backend, precision, settings.threads)
                quality = _measure(bar, output, reference, [runner.run(f) for f in feeds], manifest.mel)
                seconds = _median_call(runner, feeds[0], settings.repeats)
                row = {bar.metric: round(quality, 4), "passes": bar.passes(quality), "call_s": round(seconds, 5)}
                measured[backend].setdefault(stage, {})[precision] = row
                progress(f"{stage} on {backend} {precision}: {bar.metric} {quality:.3f}, {seconds * 1e3:.1f} ms a call")
    choice, estimate = {}, {}
    for backend, stages in measured.items():
        choice[backend] = {
            stage: min((p for p, row in rows.items() if row["passes"]), key=lambda p: rows[p]["call_s"])
            for stage, rows in stages.items()
        }
        estimate[backend] = round(sum(stages[s][choice[backend][s]]["call_s"] * calls[s] for s in stages), 4)
    fastest = min(estimate, key=estimate.get)
    report = {
        "machine": machine_info(),
        "settings": {"clips": len(TUNING_PROMPTS), "duration": settings.duration, "steps": settings.steps},
        "bars": {s: asdict(b) for s, b in QUALITY_BARS.items()},
        "measured": measured,
        "choice": choice,
        "batch_estimate_s": estimate,
        "batch_estimate_of": f"{len(TUNING_PROMPTS)} clips of {settings.duration:g} s, {manifest.defaults.steps} steps",
        "fastest_backend": fastest,
    }
    from ..bundle.dataclass_io import write_json_atomic

    write_json_atomic(bundle / TUNING_REPORT, report)
    write_bundle_manifest(bundle, replace(manifest, tuned_precision={**manifest.tuned_precision, **choice}))
    return report


class BundleBusy(ValueError):
    """Another process is tuning this bundle."""


def tune_locked(bundle: Path, settings: TuneSettings, progress: Callable[[str], None] = log.info) -> dict:
    """:func:`tune` with the bundle locked: a second ``reaudio tune`` of it is refused, not interleaved."""
    from filelock import FileLock, Timeout

    lock = FileLock(Path(bundle) / ".tune.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BundleBusy(f"{bundle}: another process is tuning this bundle ({lock.lock_file} is held)") from None
    try:
        return tune(Path(bundle), settings, progress)
    finally:
        lock.release()
