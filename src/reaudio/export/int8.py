"""int8 variants of a bundle's denoiser and decoder for the CPU backend.

onnxruntime's static quantisation (QDQ: uint8 activations, int8 weights per output
channel) of the convolutions of the UNet (denoiser) and of the VAE decoder (decoder).
Activation ranges come from calibration: the bundle's own fp32 engine generates clips
for a few dozen prompts while the inputs of both stages are recorded.

What stays fp32, measured on the default model and AudioLDM-S-sized graphs (2026-12-02,
AVX2 CPU without VNNI): guidance and the sampler update (they carry the latent between
steps); MatMul/Gemm (quantising them too cost ~3 dB of the denoiser's data-prediction SNR
and ran slower than Conv alone: 2.91 s vs 2.49 s per batch-4 step, fp32 3.65 s); and, unless
asked for (``vocoder=True``, ``reaudio quantize --vocoder``), the vocoder: it halves the decoder's
time but moves the sound (the default model's universal HiFi-GAN: CLAP score 0.154 vs 0.201,
envelope correlation 0.247 vs 0.317, FAD 251 vs 254 on 100 test captions; docs/speed.md). The
fp32 graphs stay in the bundle as the reference; ``--precision int8`` picks the new ones.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from reaudio.engine.bundle.dataclass_io import atomic_dir, write_json_atomic
from reaudio.engine.bundle.manifest import (
    BundleManifest,
    read_bundle_manifest,
    write_bundle_manifest,
)

log = logging.getLogger(__name__)

#: Stages that get an int8 graph, with the module-path scopes quantised.
INT8_SCOPES: dict[str, tuple[str, ...]] = {"denoiser": ("/unet/",), "decoder": ("/decoder/",)}
#: The vocoder's part of the decoder stage: int8 only when asked (``quantize_bundle(vocoder=True)``).
VOCODER_SCOPE = "/vocoder/"
QUANTISED_OPS = ("Conv",)
REPORT = "int8_report.json"

#: Calibration prompts: varied sources, textures and envelopes, so every layer sees typical ranges.
CALIBRATION_PROMPTS = (
    "footsteps on gravel",
    "a wooden door creaks open",
    "rain falls on a tin roof",
    "a dog barks twice",
    "glass shatters on a stone floor",
    "wind howls through a gap",
    "a crackling campfire",
    "a church bell tolls",
    "a car engine starts and idles",
    "birds chirping in a forest at dawn",
    "a crowd applauds",
    "thunder rumbles",
    "a kettle whistles",
    "typing on a mechanical keyboard",
    "a helicopter passes overhead",
    "waves on a beach",
    "a cat meows",
    "a metal pot is struck with a spoon",
    "water drips into a bucket",
    "a chainsaw cuts wood",
    "a baby laughs",
    "an old telephone rings",
    "paper is crumpled",
    "a horse gallops on a dirt road",
    "a siren wails in the distance",
    "a toilet flushes",
    "a zipper is pulled",
    "a sword is drawn from its sheath",
    "a synth pad swells",
    "an explosion echoes",
    "a clock ticks",
    "a man coughs",
)


@dataclass(frozen=True)
class Calibration:
    """How calibration inputs are gathered.

    Attributes:
        prompts: prompts the fp32 engine generates from.
        steps: denoising steps per clip (each step is one denoiser input).
        duration: seconds per clip (None: the bundle's default, at most 5 s; activation ranges
            hardly depend on the length, the calibration time does).
        batch_size: clips per engine batch.
        max_feeds: denoiser inputs kept for calibration, spread evenly over prompts and steps.
        threads: onnxruntime threads (None: all cores).
    """

    prompts: tuple[str, ...] = CALIBRATION_PROMPTS
    steps: int = 10
    duration: float | None = None
    batch_size: int = 4
    max_feeds: int = 24
    threads: int | None = None


class BundleBusy(ValueError):
    """Another process is quantising this bundle."""


class _Recorder:
    """Wraps a runner; keeps a copy of every input it is given."""

    def __init__(self, runner, feeds: list) -> None:
        self.runner, self.feeds = runner, feeds
        self.spec, self.input_dtypes, self.output_names = runner.spec, runner.input_dtypes, runner.output_names

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append({k: np.array(v, dtype=self.input_dtypes[k]) for k, v in feeds.items()})
        return self.runner.run(feeds)


def record_feeds(bundle: Path, calibration: Calibration, progress: Callable[[str], None] = log.info) -> dict:
    """Inputs the fp32 engine gives the quantised stages while generating the calibration prompts."""
    from reaudio.engine.pipeline import Engine, Request

    engine = Engine.from_bundle(bundle, backend="cpu", threads=calibration.threads, precision="fp32")
    duration = calibration.duration or min(engine.manifest.defaults.duration, 5.0)
    feeds: dict[str, list] = {stage: [] for stage in INT8_SCOPES if stage in engine.runners}
    for stage, kept in feeds.items():
        engine.runners[stage] = _Recorder(engine.runners[stage], kept)
    prompts, size = calibration.prompts, calibration.batch_size
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        progress(f"calibration: prompts {start + 1}-{start + len(chunk)} of {len(prompts)}")
        requests = [Request(p, seed=start + i, steps=calibration.steps, duration=duration) for i, p in enumerate(chunk)]
        for result in engine.generate(requests, batch_size=size):
            if result.error:
                raise RuntimeError(f"calibration prompt {result.request.prompt!r} failed: {result.error}")
    return {stage: spread(kept, calibration.max_feeds) for stage, kept in feeds.items()}


def spread(items: list, n: int) -> list:
    """At most ``n`` of ``items``, evenly spaced (first and last included)."""
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


class _Feeds:
    """onnxruntime's CalibrationDataReader protocol over recorded inputs."""

    def __init__(self, feeds: list[dict]) -> None:
        self._it = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._it, None)


def quantize_graph(src: Path, dst: Path, feeds: list[dict], scopes: tuple[str, ...]) -> Path:
    """Write the static int8 (QDQ) copy of ``src`` calibrated on ``feeds``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    _quiet_preprocessing_hint()
    dst.parent.mkdir(parents=True, exist_ok=True)
    graph = onnx.load(str(src), load_external_data=False).graph
    nodes = [n.name for n in graph.node if n.name.startswith(scopes)]
    quantize_static(
        str(src),
        str(dst),
        _Feeds(feeds),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTISED_OPS),
        per_channel=True,
        # VNNI and ARM dot-product cores accumulate 8-bit products without saturating; a 7-bit
        # range would only lose precision on them.
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes,
        use_external_data_format=src.with_name(src.name + ".data").exists(),
        calibrate_method=CalibrationMethod.MinMax,
        # MinMax calibration keeps only per-tensor minima and maxima, so memory stays small. (Not
        # CalibMaxIntermediateOutputs: onnxruntime 1.32 discards the batches it flushes.)
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
    )
    _unquantise_outside(dst, scopes)
    return dst


def _unquantise_outside(path: Path, scopes: tuple[str, ...]) -> None:
    """Point nodes outside ``scopes`` back at the fp32 tensors their inputs were quantised from.

    onnxruntime's QDQ pass hands every reader of a quantised tensor the dequantised copy, so the
    guidance and sampler update would read the UNet's prediction rounded to 8 bits (and the
    vocoder the VAE's mel); outside the scopes nothing is quantised.
    """
    import onnx

    from .onnx_export import save_onnx

    model = onnx.load(str(path))
    quantised_from = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    original = {
        n.output[0]: quantised_from[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in quantised_from
    }
    changed = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or node.name.startswith(scopes):
            continue
        for i, name in enumerate(node.input):
            if name in original:
                node.input[i] = original[name]
                changed += 1
    if changed:
        save_onnx(model, path)
    log.debug("%s: %d input(s) outside %s read fp32 again", path, changed, scopes)


class _NoPreprocessingHint(logging.Filter):
    """onnxruntime logs "consider pre-processing" on the root logger for every graph; ours are exported
    with shapes and optimised by onnxruntime when loaded, so the hint is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


_HINT_FILTER = _NoPreprocessingHint()


def _quiet_preprocessing_hint() -> None:
    if _HINT_FILTER not in logging.getLogger().filters:
        logging.getLogger().addFilter(_HINT_FILTER)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-error ratio of ``other`` against ``reference`` in dB."""
    err = float(np.sum((reference.astype(np.float64) - other) ** 2))
    return float("inf") if err == 0 else 10 * float(np.log10(np.sum(reference.astype(np.float64) ** 2) / err))


def compare_graphs(fp32: Path, int8: Path, feeds: list[dict], threads: int | None, mel=None) -> dict:
    """Per output, the worst over ``feeds`` of the int8 graph against the fp32 one: SNR (dB) and,
    for a waveform with ``mel`` (the bundle's MelConfig), the mean log-mel difference."""
    from reaudio.engine.stages.backends import OrtRunner

    sessions = [OrtRunner.session_for(p, ["CPUExecutionProvider"], threads) for p in (fp32, int8)]
    names = [o.name for o in sessions[0].get_outputs()]
    report: dict[str, float] = {}
    for feed in feeds:
        ref, got = (s.run(names, feed) for s in sessions)
        for name, a, b in zip(names, ref, got):
            key = f"{name}_snr_db"
            report[key] = min(report.get(key, float("inf")), round(snr_db(a, b), 2))
            if name == "waveform" and mel is not None:
                key = "log_mel_l1"
                report[key] = max(report.get(key, 0.0), round(log_mel_l1(a, b, mel), 4))
    return report


def log_mel_l1(reference: np.ndarray, other: np.ndarray, mel) -> float:
    """Mean absolute difference of the two waveforms' log-mel spectrograms, in the bundle's own
    log-mel units (natural-log magnitude for AudioLDM and the default model)."""
    from reaudio.engine.audio.frontend import log_mel

    return float(np.mean(np.abs(log_mel(reference, mel) - log_mel(other, mel))))


def quantize_bundle(
    bundle: str | Path,
    out: str | Path | None = None,
    calibration: Calibration | None = None,
    overwrite: bool = False,
    progress: Callable[[str], None] = log.info,
    vocoder: bool = False,
) -> BundleManifest:
    """Add int8 denoiser and decoder graphs to ``bundle`` (or to a copy at ``out``); ``vocoder``:
    the vocoder's convolutions too (about twice as fast a decoder; what it costs in sound depends
    on the vocoder: measure it with ``reaudio eval``).

    In place, the new files are written under temporary names and the manifest is
    rewritten last, under a lock: a crash leaves the bundle as it was.
    """
    from filelock import FileLock, Timeout

    bundle = Path(bundle)
    calibration = calibration or Calibration()
    read_bundle_manifest(bundle)  # a corrupted bundle is refused before any work
    if out is not None:
        out = Path(out)
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite")
        with atomic_dir(out) as tmp:
            shutil.copytree(bundle, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*", "plans"))
            manifest = _add_int8(tmp, calibration, progress, vocoder)
        return manifest
    lock = FileLock(bundle / ".quantize.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BundleBusy(
            f"{bundle}: another process is quantising this bundle ({lock.lock_file} is held); wait for it to finish"
        ) from None
    try:
        return _add_int8(bundle, calibration, progress, vocoder)
    finally:
        lock.release()


def _add_int8(bundle: Path, calibration: Calibration, progress: Callable[[str], None], vocoder: bool) -> BundleManifest:
    manifest = read_bundle_manifest(bundle)
    feeds = record_feeds(bundle, calibration, progress)
    staging = bundle / ".int8-partial"
    shutil.rmtree(staging, ignore_errors=True)
    report = {"calibration": {"prompts": len(calibration.prompts), "steps": calibration.steps}, "vocoder": vocoder}
    stages = {}
    for stage, recorded in feeds.items():
        spec = manifest.stages[stage]
        rel = Path(spec.file).with_name("model.int8.onnx").as_posix()
        progress(f"quantising {stage} ({len(recorded)} calibration inputs)")
        scopes = INT8_SCOPES[stage] + ((VOCODER_SCOPE,) if vocoder and stage == "decoder" else ())
        written = quantize_graph(bundle / spec.file, staging / rel, recorded, scopes)
        report[stage] = compare_graphs(
            bundle / spec.file, written, spread(recorded, 4), calibration.threads, manifest.mel
        )
        progress(f"{stage}: int8 vs fp32 on calibration inputs: {report[stage]}")
        stages[stage] = replace(spec, int8_file=rel)
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = bundle / path.relative_to(staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    shutil.rmtree(staging, ignore_errors=True)
    write_json_atomic(bundle / REPORT, report)
    return write_bundle_manifest(bundle, replace(manifest, stages={**manifest.stages, **stages}))
