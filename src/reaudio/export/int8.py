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
envelope correlation 0.247 vs 0.317, FAD 251 vs 254 on 100 test captions; docs/speed.md). Of the
UNet's convolutions, the few whose rounding costs the most stay fp32 too: a per-layer sensitivity
pass (:mod:`.int8_sensitivity`) keeps the denoiser's x0 prediction at ``DENOISER_TARGET_SNR_DB``.
The fp32 graphs stay in the bundle as the reference; ``--precision int8`` picks the new ones.
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
#: The output the sensitivity pass keeps close to fp32, per stage it runs on.
SENSITIVITY_OUTPUTS = {"denoiser": "x0"}
#: The denoiser's x0 SNR (dB, against fp32 over the scored inputs) the pass keeps by default: on the
#: default model every convolution in int8 gives 13.8 dB, the 24 most sensitive of 73 kept fp32
#: 30.0 dB, and that scores fp32's FAD (docs/speed.md, 2026-12-07).
DENOISER_TARGET_SNR_DB = 30.0
#: Calibration inputs the pass scores each trial on.
SCORED_FEEDS = 6

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


def quantize_graph(
    src: Path,
    dst: Path,
    feeds: list[dict] | None,
    scopes: tuple[str, ...],
    nodes: list[str] | None = None,
    ranges: Path | None = None,
) -> Path:
    """Write the static int8 (QDQ) copy of ``src`` calibrated on ``feeds``: the convolutions under
    ``scopes``, or only ``nodes`` when given. ``ranges``: onnxruntime's calibration cache; when it
    exists the ranges are read from it (``feeds`` may be None), else calibrated and stored there."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)
    _quiet_preprocessing_hint()
    dst.parent.mkdir(parents=True, exist_ok=True)
    if nodes is None:
        graph = onnx.load(str(src), load_external_data=False).graph
        nodes = conv_nodes(graph, scopes)
    if not nodes:  # onnxruntime reads an empty list as "every node"
        raise ValueError(f"{src}: no nodes to quantise")
    quantize_static(
        str(src),
        str(dst),
        _Feeds(feeds) if feeds is not None else None,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(QUANTISED_OPS),
        per_channel=True,
        # VNNI and ARM dot-product cores accumulate 8-bit products without saturating; a 7-bit
        # range would only lose precision on them.
        reduce_range=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=list(nodes),
        use_external_data_format=src.with_name(src.name + ".data").exists(),
        calibrate_method=CalibrationMethod.MinMax,
        # MinMax calibration keeps only per-tensor minima and maxima, so memory stays small. (Not
        # CalibMaxIntermediateOutputs: onnxruntime 1.32 discards the batches it flushes.)
        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
        calibration_cache_path=str(ranges) if ranges is not None else None,
    )
    _unquantise_outside(dst, scopes)
    return dst


def conv_nodes(graph, scopes: tuple[str, ...]) -> list[str]:
    """The quantisable nodes (``QUANTISED_OPS``) of ``graph`` under ``scopes``, in graph order."""
    return [n.name for n in graph.node if n.op_type in QUANTISED_OPS and n.name.startswith(scopes)]


def _unquantise_outside(path: Path, scopes: tuple[str, ...]) -> None:
    """Point nodes outside ``scopes`` back at the fp32 tensors their inputs were quantised from.

    onnxruntime's QDQ pass hands every reader of a quantised tensor the dequantised copy, so the
    guidance and sampler update would read the UNet's prediction rounded to 8 bits (and the
    vocoder the VAE's mel); outside the scopes nothing is quantised. Inside, readers keep the
    dequantised copy even when they are fp32 (a convolution the sensitivity pass kept, an Add):
    a quantised convolution whose output fed an fp32 reader too could not be fused into one int8
    kernel, and ran slower than fp32 (the default model's denoiser: 413 against 249 ms a step).
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
    target_snr_db: float | None = DENOISER_TARGET_SNR_DB,
) -> BundleManifest:
    """Add int8 denoiser and decoder graphs to ``bundle`` (or to a copy at ``out``); ``vocoder``:
    the vocoder's convolutions too (about twice as fast a decoder; what it costs in sound depends
    on the vocoder: measure it with ``reaudio eval``). ``target_snr_db``: the denoiser's convolutions
    that int8 may take are those that keep its x0 prediction at this SNR against fp32 (the
    per-layer sensitivity pass); None quantises every one.

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
            manifest = _add_int8(tmp, calibration, progress, vocoder, target_snr_db)
        return manifest
    lock = FileLock(bundle / ".quantize.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BundleBusy(
            f"{bundle}: another process is quantising this bundle ({lock.lock_file} is held); wait for it to finish"
        ) from None
    try:
        return _add_int8(bundle, calibration, progress, vocoder, target_snr_db)
    finally:
        lock.release()


def _quantize_sensitive(
    src: Path,
    dst: Path,
    recorded: list[dict],
    scopes: tuple[str, ...],
    stage: str,
    target_snr_db: float,
    calibration: Calibration,
    progress: Callable[[str], None],
    report: dict,
) -> Path | None:
    """The stage's int8 graph with its most sensitive convolutions kept fp32 (see
    :mod:`.int8_sensitivity`); None when only fp32 everywhere reaches the target."""
    import onnx

    from .int8_sensitivity import sensitivity_pass

    candidates = conv_nodes(onnx.load(str(src), load_external_data=False).graph, scopes)

    def quantize(out: Path, nodes: list[str], ranges: Path) -> Path:
        return quantize_graph(src, out, recorded, scopes, nodes=nodes, ranges=ranges)

    found = sensitivity_pass(
        src,
        dst,
        spread(recorded, SCORED_FEEDS),
        candidates,
        quantize,
        SENSITIVITY_OUTPUTS[stage],
        target_snr_db,
        calibration.threads,
        progress,
    )
    report[f"{stage}_sensitivity"] = found.to_dict()
    progress(
        f"{stage}: {len(candidates) - len(found.kept_fp32)} of {len(candidates)} convolutions in int8, "
        f"{SENSITIVITY_OUTPUTS[stage]} SNR {found.snr_db:.1f} dB (every one in int8: {found.all_int8_snr_db:.1f} dB)"
    )
    return dst if len(found.kept_fp32) < len(candidates) else None


def _add_int8(
    bundle: Path, calibration: Calibration, progress: Callable[[str], None], vocoder: bool, target_snr_db: float | None
) -> BundleManifest:
    manifest = read_bundle_manifest(bundle)
    feeds = record_feeds(bundle, calibration, progress)
    staging = bundle / ".int8-partial"
    shutil.rmtree(staging, ignore_errors=True)
    report = {
        "calibration": {"prompts": len(calibration.prompts), "steps": calibration.steps},
        "vocoder": vocoder,
        "target_snr_db": target_snr_db,
    }
    stages = {}
    for stage, recorded in feeds.items():
        spec = manifest.stages[stage]
        rel = Path(spec.file).with_name("model.int8.onnx").as_posix()
        progress(f"quantising {stage} ({len(recorded)} calibration inputs)")
        scopes = INT8_SCOPES[stage] + ((VOCODER_SCOPE,) if vocoder and stage == "decoder" else ())
        if stage in SENSITIVITY_OUTPUTS and target_snr_db is not None:
            written = _quantize_sensitive(
                bundle / spec.file, staging / rel, recorded, scopes, stage, target_snr_db, calibration, progress, report
            )
            if written is None:
                progress(f"{stage}: only fp32 everywhere keeps {target_snr_db:g} dB; no int8 graph for it")
                stages[stage] = replace(spec, int8_file=None)
                continue
        else:
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
