"""The prepared GPU check: diffusers fp16 vs the engine on ORT-CUDA, same card, same weights.

    python benchmarks/gpu/gpu_checks.py --phase build --out $OUT   # needs torch + diffusers only
    python benchmarks/gpu/gpu_checks.py --phase ort --out $OUT     # needs onnxruntime-gpu too

Two phases: ``build`` needs torch and diffusers only, ``ort`` needs onnxruntime-gpu
too (README.md beside this file says what to install). Both keep their state
in ``--work`` (default /tmp/reaudio-gpu) and write ``$OUT/<phase>.json`` after
every step, so a run cut short still reports what it did; a failing step is
recorded with its traceback and the next step still runs.

build: environment; a random AudioLDM-S-sized diffusers pipeline, its imported
       fp16 bundle and a copy with the fused fp16 denoiser (``--optimize gpu``:
       onnxruntime's transformer optimizer); diffusers fp16 alone (10-s clips,
       25 DDIM steps, median of 3 after a warm-up); the pipeline's FLOPs per clip
       (torch's FlopCounterMode) and a measured fp16 matmul peak.
ort:   parity of every stage of a random `tiny` bundle on ORT-CUDA fp32/fp16 vs
       ORT-CPU fp32, and of the fused denoiser against the unfused one; then, alternating
       in one process on the same prompts and latents: diffusers fp16 (eager and
       ``torch.compile``d UNet), the engine's plain fp16 graphs, the fused graph, and the
       fused graph with CUDA graphs; throughput ratios, waveform differences, and the
       share of the compute floor (FLOPs per clip at the measured fp16 matmul peak).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

STEPS, SECONDS, GUIDANCE, REPEATS = 25, 10.0, 2.5, 3
#: --dry-run-cpu: the whole script on the CPU with the tiny pipeline, to check it before spending GPU time.
DEVICE, SIZE = "cuda", "audioldm-s"


def to_json(value):
    return float(value) if isinstance(value, (np.floating, np.integer)) else repr(value)


class Report:
    """A JSON report rewritten after every step; failing steps keep their traceback."""

    def __init__(self, path: Path) -> None:
        self.path, self.data = path, {}

    def step(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        try:
            value = fn(*args, **kwargs)
            self.data[name] = value
        except Exception:  # a report of what broke is the point of this script
            value = None
            self.data[name] = {"error": traceback.format_exc()}
            print(self.data[name]["error"], flush=True)
        self.data.setdefault("step_seconds", {})[name] = round(time.perf_counter() - start, 2)
        self.write()
        return value

    def write(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, default=to_json))


def environment(work: Path) -> dict:
    import torch

    marker = work / "marker.txt"
    previous = marker.read_text() if marker.is_file() else None
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    gpu = "no nvidia-smi on this machine"
    if shutil.which("nvidia-smi"):
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    info = {
        "gpu": gpu,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "work_marker_from_earlier_call": previous,
    }
    try:
        import onnxruntime as ort

        info.update(onnxruntime=ort.__version__, providers=ort.get_available_providers())
    except ImportError as exc:
        info["onnxruntime"] = f"missing: {exc}"
    return info


def sync() -> None:
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def clip_frames(m) -> tuple[int, float]:
    per_frame = m.latent.downsample * m.mel.hop_length
    frames = -(-round(SECONDS * m.sample_rate) // per_frame)
    return frames, frames * per_frame / m.sample_rate


def build(work: Path) -> dict:
    from reaudio.export.import_audioldm import import_audioldm
    from reaudio.training.toy_audioldm import make

    times = {}
    if not (work / SIZE / "pipeline" / "model_index.json").is_file():
        start = time.perf_counter()
        make(work / SIZE, SIZE)
        times["make_pipeline_s"] = time.perf_counter() - start
    if not (work / SIZE / "bundle" / "manifest.json").is_file():
        start = time.perf_counter()
        import_audioldm(work / SIZE / "pipeline", work / SIZE / "bundle", fp16=True, overwrite=True)
        times["import_bundle_s"] = time.perf_counter() - start
    if not (work / SIZE / "bundle-fused" / "manifest.json").is_file():
        start = time.perf_counter()
        times["fused_ops"] = fused_copy(work / SIZE / "bundle", work / SIZE / "bundle-fused")
        times["fuse_s"] = time.perf_counter() - start
    return times


def fused_copy(bundle: Path, out: Path) -> dict:
    """``bundle`` plus the fused fp16 denoiser, as ``reaudio import … --fp16 --optimize gpu`` writes it."""
    import shutil
    from dataclasses import replace

    from reaudio.engine.bundle.manifest import read_bundle_manifest, write_bundle_manifest
    from reaudio.export.bundle import FP16_SCOPES
    from reaudio.export.gpu_fusion import fuse_denoiser

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out)
    manifest = read_bundle_manifest(out)
    spec = manifest.stages["denoiser"]
    rel = "denoiser/model.fp16.fused.onnx"
    counts = fuse_denoiser(out / spec.file, out / rel, fp16=True, fp32_outside=FP16_SCOPES["denoiser"])
    write_bundle_manifest(out, replace(manifest, stages={**manifest.stages, "denoiser": replace(spec, fused_file=rel)}))
    return counts


class Workload:
    """The shared inputs: prompts and explicit initial latents per batch size."""

    def __init__(self, work: Path) -> None:
        from reaudio.engine.bundle.manifest import read_bundle_manifest

        self.pipeline_dir = work / SIZE / "pipeline"
        self.bundle = work / SIZE / "bundle"
        self.fused_bundle = work / SIZE / "bundle-fused"
        self.manifest = read_bundle_manifest(self.bundle, verify=False)
        self.frames, self.seconds = clip_frames(self.manifest)

    def inputs(self, batch: int) -> tuple[list[str], np.ndarray]:
        m = self.manifest
        prompts = [f"sound effect number {i}: a dog barks in the rain" for i in range(batch)]
        shape = (batch, m.latent.channels, self.frames, m.latent.freq)
        return prompts, np.random.default_rng(batch).standard_normal(shape).astype(np.float32)


def diffusers_runner(load: Workload, compiled: bool = False):
    import torch
    from diffusers import AudioLDMPipeline

    dtype = torch.float16 if DEVICE == "cuda" else torch.float32
    pipe = AudioLDMPipeline.from_pretrained(str(load.pipeline_dir), torch_dtype=dtype).to(DEVICE)
    pipe.set_progress_bar_config(disable=True)
    if compiled:  # what a diffusers user would reach for first; compiled on the warm-up call
        pipe.unet = torch.compile(pipe.unet)

    def run(batch: int) -> np.ndarray:
        prompts, latents = load.inputs(batch)
        with torch.inference_mode():
            out = pipe(
                prompts,
                audio_length_in_s=load.seconds,
                num_inference_steps=STEPS,
                guidance_scale=GUIDANCE,
                latents=torch.from_numpy(latents).to(DEVICE, dtype),
                output_type="np",
            ).audios
        sync()
        return np.asarray(out, dtype=np.float32)

    return pipe, run


def engine_runner(load: Workload, cuda_graphs: bool, fused: bool = False):
    from reaudio.engine.pipeline import Engine, Request

    bundle = load.fused_bundle if fused else load.bundle
    engine = Engine.from_bundle(bundle, backend=DEVICE, cuda_graphs=cuda_graphs, verify=False)
    providers = {name: r.session.get_providers() for name, r in engine.runners.items()}

    def run(batch: int) -> np.ndarray:
        prompts, latents = load.inputs(batch)
        reqs = [
            Request(p, initial_latent=lat, steps=STEPS, guidance=GUIDANCE, sampler="ddim")
            for p, lat in zip(prompts, latents)
        ]
        results = engine.generate(reqs, batch_size=batch)
        bad = [r.error for r in results if not r.ok]
        if bad:
            raise RuntimeError(f"engine failed: {bad[0]}")
        return np.stack([r.waveform for r in results])

    return providers, run


def timed(
    runners: dict, batches: list[int], work: Path, save_outputs: bool = False, floor_s_per_clip: float | None = None
) -> list[dict]:
    """Warm-up, then ``REPEATS`` rounds alternating the runners; medians, ratios, waveform differences."""
    rows = []
    for batch in batches:
        outputs, times, errors = {}, {name: [] for name in runners}, {}
        for name, run in runners.items():
            try:
                outputs[name] = run(batch)
            except Exception:
                errors[name] = traceback.format_exc()
                print(errors[name], flush=True)
        live = {n: r for n, r in runners.items() if n in outputs}
        for _ in range(REPEATS):
            for name, run in live.items():
                start = time.perf_counter()
                run(batch)
                times[name].append(time.perf_counter() - start)
        med = {name: statistics.median(t) for name, t in times.items() if t}
        row = {
            "batch": batch,
            "steps": STEPS,
            "seconds_audio": SECONDS,
            "median_s": med,
            "runs_s": times,
            "clips_per_s": {n: batch / t for n, t in med.items()},
            "errors": errors,
        }
        if "diffusers_fp16" in med:
            row["speedup_vs_diffusers"] = {n: med["diffusers_fp16"] / t for n, t in med.items()}
        if "diffusers_fp16_compiled" in med:
            row["speedup_vs_compiled_diffusers"] = {n: med["diffusers_fp16_compiled"] / t for n, t in med.items()}
        if floor_s_per_clip:
            # The floor: every FLOP at the measured fp16 matmul peak; 1.0 would be perfect.
            row["share_of_compute_floor"] = {n: floor_s_per_clip * batch / t for n, t in med.items()}
        if "diffusers_fp16" in outputs:
            ref = outputs["diffusers_fp16"]
            n = min(ref.shape[-1], *(o.shape[-1] for o in outputs.values()))
            row["max_abs_diff_rel_peak_vs_diffusers"] = {
                name: float(np.abs(o[..., :n] - ref[..., :n]).max() / np.abs(ref).max()) for name, o in outputs.items()
            }
            if save_outputs:
                np.save(work / f"diffusers_b{batch}.npy", ref)
        rows.append(row)
    return rows


def flops_and_peak(load: Workload) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pipe, run = diffusers_runner(load)
    with FlopCounterMode(display=False) as counter:
        run(1)
    per_clip = counter.get_total_flops()
    size = 8192 if DEVICE == "cuda" else 512
    a = torch.randn(size, size, device=DEVICE, dtype=torch.float16 if DEVICE == "cuda" else torch.float32)
    for _ in range(3):
        a @ a
    sync()
    start = time.perf_counter()
    for _ in range(10):
        a @ a
    sync()
    peak = 10 * 2 * size**3 / (time.perf_counter() - start)
    del pipe
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return {
        "pipeline_flops_per_clip": per_clip,
        "fp16_matmul_peak_flops": peak,
        "floor_s_per_clip_at_measured_peak": per_clip / peak,
    }


def parity(work: Path) -> list[dict]:
    import onnxruntime as ort

    from reaudio.engine.bundle.manifest import read_bundle_manifest
    from reaudio.export.contracts import contract
    from reaudio.models.configs import load_config
    from reaudio.training.toy_bundle import make

    bundle = make(work / "reaudio-tiny", fp16=True)
    manifest = read_bundle_manifest(bundle)
    cfg = load_config(bundle / "family.json")
    rows = []
    for stage, spec in manifest.stages.items():
        args = contract(stage, cfg).sample_inputs(cfg, batch=4, frames=63)
        feeds = {s.name: a.numpy() for s, a in zip(spec.inputs, args)}
        cpu = ort.InferenceSession(str(bundle / spec.file), providers=["CPUExecutionProvider"])
        expected = cpu.run(None, feeds)
        for label, file in (("fp32", spec.file), ("fp16", spec.fp16_file)):
            provider = "CUDAExecutionProvider" if DEVICE == "cuda" else "CPUExecutionProvider"
            sess = ort.InferenceSession(str(bundle / file), providers=[provider])
            actual = sess.run(None, feeds)
            for out_spec, e, a in zip(spec.outputs, expected, actual):
                rel = float(np.abs(a - e).max() / (np.abs(e).max() or 1.0))
                rows.append(
                    {
                        "stage": stage,
                        "precision": label,
                        "output": out_spec.name,
                        "rel": rel,
                        "providers": sess.get_providers(),
                    }
                )
    return rows


def fused_parity(load: Workload) -> list[dict]:
    """The fused fp16 denoiser (CUDA) against the unfused fp16 and fp32 ones, on the same step inputs."""
    import onnxruntime as ort

    from reaudio.engine.bundle.manifest import read_bundle_manifest
    from reaudio.export.contracts import contract
    from reaudio.models.configs import load_config

    cfg = load_config(load.bundle / "family.json")
    spec = load.manifest.stages["denoiser"]
    provider = ["CUDAExecutionProvider"] if DEVICE == "cuda" else ["CPUExecutionProvider"]
    fused_spec = read_bundle_manifest(load.fused_bundle, verify=False).stages["denoiser"]
    rows = []
    for batch in (1, 8):
        args = contract("denoiser", cfg).sample_inputs(cfg, batch=batch, frames=load.frames)
        feeds = {s.name: a.numpy() for s, a in zip(spec.inputs, args)}
        ref = ort.InferenceSession(str(load.bundle / spec.file), providers=provider).run(None, feeds)
        for label, path in (
            ("fp16", load.bundle / spec.fp16_file),
            ("fused_fp16", load.fused_bundle / (fused_spec.fused_file or fused_spec.file)),
        ):
            if DEVICE != "cuda" and label == "fused_fp16":
                # Its kernels are CUDA-only: the dry run checks the plumbing on the fp32 graph.
                label, path = "fused_fp16 (dry run: fp32 graph)", load.fused_bundle / fused_spec.file
            got = ort.InferenceSession(str(path), providers=provider).run(None, feeds)
            for out_spec, e, a in zip(spec.outputs, ref, got):
                rows.append(
                    {
                        "batch": batch,
                        "graph": label,
                        "output": out_spec.name,
                        "rel_vs_fp32": float(np.abs(a - e).max() / (np.abs(e).max() or 1.0)),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phase", choices=("build", "ort"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/reaudio-gpu"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--quick", action="store_true", help="build: no FLOP count or diffusers-alone run; ort: no parity"
    )
    parser.add_argument(
        "--dry-run-cpu", action="store_true", help="tiny pipeline on the CPU, 3 steps: checks the script"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch  # first: its CUDA, cuBLAS and cuDNN libraries are then loaded for onnxruntime too

    global DEVICE, SIZE, STEPS, SECONDS
    if args.dry_run_cpu:
        DEVICE, SIZE, STEPS, SECONDS = "cpu", "tiny", 3, 2.0
    else:
        assert torch.cuda.is_available(), "no CUDA device"
    report = Report(args.out / f"{args.phase}.json")
    report.step("environment", environment, args.work)
    if args.phase == "build":
        report.step("build", build, args.work)
        load = report.step("workload", Workload, args.work)
        if load:
            report.data["workload"] = {"frames": load.frames, "seconds": load.seconds}
            report.write()
        if load and not args.quick:
            report.step("flops", flops_and_peak, load)
            _, run = diffusers_runner(load)
            report.step("diffusers_alone", timed, {"diffusers_fp16": run}, args.batches, args.work, True)
    else:
        report.step("build", build, args.work)  # nothing to do when the build phase ran on this machine
        load = Workload(args.work)
        if not args.quick:
            report.step("parity_tiny", parity, args.work)
            report.step("parity_fused", fused_parity, load)
        floor = None
        previous = args.out / "build.json"
        if previous.is_file():
            floor = json.loads(previous.read_text()).get("flops", {}).get("floor_s_per_clip_at_measured_peak")
        runners = {"diffusers_fp16": diffusers_runner(load)[1]}
        compiled = report.step("load_diffusers_fp16_compiled", diffusers_runner, load, True)
        if compiled:
            report.data["load_diffusers_fp16_compiled"] = "ok"
            runners["diffusers_fp16_compiled"] = compiled[1]
        for name, graphs, fused in (
            ("reaudio_fp16", False, False),
            ("reaudio_fused", False, True),
            ("reaudio_fused_cuda_graphs", True, True),
        ):
            if graphs and DEVICE != "cuda":
                report.data[f"load_{name}"] = "skipped: CUDA graphs need a GPU (dry run)"
                continue
            made = report.step(f"load_{name}", engine_runner, load, graphs, fused)
            if made:
                report.data[f"load_{name}"] = made[0]
                runners[name] = made[1]
        report.step("side_by_side", timed, runners, args.batches, args.work, False, floor)
    print(json.dumps(report.data, indent=1, default=to_json)[-8000:], flush=True)


if __name__ == "__main__":
    main()
