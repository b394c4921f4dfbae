"""The prepared GPU check: ORT-CUDA parity and engine-vs-diffusers fp16 timing, results as JSON.

    python benchmarks/gpu/gpu_checks.py --out $OUT [--quick]

Needs onnxruntime-gpu (CUDA provider), torch with CUDA and diffusers on the GPU
machine (see README.md beside this file for carrying the wheels). Steps, each
written to ``$OUT/gpu_checks.json`` as soon as it finishes, so a run cut short
still reports what it did:

1. environment: GPU name, onnxruntime providers, versions;
2. parity: every stage of a random `tiny` bundle on ORT-CUDA fp32 and fp16 vs
   ORT-CPU fp32 (relative error of peak);
3. timing: a random AudioLDM-S-sized diffusers pipeline in fp16 on CUDA vs the
   engine on the imported bundle (fp16 graphs, IO binding), 10-s clips, 25 DDIM
   steps, batch 1/4/8, warm-up then alternating runs, median of 3.

Written without a GPU at hand (2026-11-27); it has not run yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def save(out: Path, report: dict) -> None:
    (out / "gpu_checks.json").write_text(json.dumps(report, indent=2))


def environment() -> dict:
    import onnxruntime as ort

    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    return {"gpu": gpu, "providers": ort.get_available_providers(), "onnxruntime": ort.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip


def parity(work: Path) -> list[dict]:
    import onnxruntime as ort

    from reaudio.engine.manifest import read_manifest
    from reaudio.export.contracts import contract
    from reaudio.models.configs import load_config
    from tests.make_tiny_bundle import make

    bundle = make(work / "tiny", fp16=True)
    manifest = read_manifest(bundle)
    cfg = load_config(bundle / "family.json")
    rows = []
    for stage, spec in manifest.stages.items():
        args = contract(stage, cfg).sample_inputs(cfg, batch=4, frames=63)
        feeds = {s.name: a.numpy() for s, a in zip(spec.inputs, args)}
        cpu = ort.InferenceSession(str(bundle / spec.file), providers=["CPUExecutionProvider"])
        expected = cpu.run(None, feeds)
        for label, file in (("fp32", spec.file), ("fp16", spec.fp16_file)):
            sess = ort.InferenceSession(str(bundle / file), providers=["CUDAExecutionProvider"])
            actual = sess.run(None, feeds)
            for out_spec, e, a in zip(spec.outputs, expected, actual):
                rel = float(np.abs(a - e).max() / (np.abs(e).max() or 1.0))
                rows.append({"stage": stage, "precision": label, "output": out_spec.name, "rel": rel})
    return rows


def timing(work: Path, batches: list[int], steps: int, seconds: float, repeats: int) -> list[dict]:
    import torch
    from diffusers import AudioLDMPipeline

    from reaudio.engine.engine import Engine, Request
    from reaudio.export.import_audioldm import import_audioldm
    from tests.make_tiny_audioldm import make

    pipeline_dir = work / "audioldm-s" / "pipeline"
    if not (pipeline_dir / "model_index.json").is_file():
        make(work / "audioldm-s", "audioldm-s")
    bundle = work / "audioldm-s" / "bundle"
    if not (bundle / "manifest.json").is_file():
        import_audioldm(pipeline_dir, bundle, fp16=True, overwrite=True)
    pipe = AudioLDMPipeline.from_pretrained(str(pipeline_dir), torch_dtype=torch.float16).to("cuda")
    pipe.set_progress_bar_config(disable=True)
    engine = Engine.from_bundle(bundle, backend="cuda")
    graphs = Engine.from_bundle(bundle, backend="cuda", cuda_graphs=True)
    m = engine.manifest
    frames = -(-round(seconds * m.sample_rate) // (m.latent.downsample * m.mel.hop_length))
    length = frames * m.latent.downsample * m.mel.hop_length / m.sample_rate
    rows = []
    for batch in batches:
        prompts = [f"sound effect number {i}" for i in range(batch)]
        latents = np.random.default_rng(batch).standard_normal(
            (batch, m.latent.channels, frames, m.latent.freq)).astype(np.float32)  # fmt: skip

        def run_diffusers(prompts=prompts, latents=latents):
            out = pipe(prompts, audio_length_in_s=length, num_inference_steps=steps, guidance_scale=2.5,
                       latents=torch.from_numpy(latents).to("cuda", torch.float16), output_type="np").audios
            torch.cuda.synchronize()
            return out

        def run_engine(prompts=prompts, latents=latents, batch=batch):
            reqs = [Request(p, initial_latent=lat, steps=steps, guidance=2.5) for p, lat in zip(prompts, latents)]
            return np.stack([r.waveform for r in engine.generate(reqs, batch_size=batch)])

        def run_graphs(prompts=prompts, latents=latents, batch=batch):
            reqs = [Request(p, initial_latent=lat, steps=steps, guidance=2.5) for p, lat in zip(prompts, latents)]
            return np.stack([r.waveform for r in graphs.generate(reqs, batch_size=batch)])

        ref, ours, replayed = run_diffusers(), run_engine(), run_graphs()
        times = {"diffusers_fp16": [], "reaudio_cuda_fp16": [], "reaudio_cuda_graphs": []}
        for _ in range(repeats):
            for name, fn in (("diffusers_fp16", run_diffusers), ("reaudio_cuda_fp16", run_engine),
                             ("reaudio_cuda_graphs", run_graphs)):  # fmt: skip
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"batch": batch, "seconds": length, "steps": steps, **{f"{k}_s": v for k, v in med.items()},
                     "ratio": med["diffusers_fp16"] / med["reaudio_cuda_fp16"],
                     "max_abs_diff_rel_peak": float(np.abs(ref - ours).max() / np.abs(ref).max()),
                     "graphs_vs_plain_rel_peak": float(np.abs(replayed - ours).max() / np.abs(ours).max()),
                     "runs": times})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/reaudio-gpu"))
    parser.add_argument("--quick", action="store_true", help="parity only, no timing")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"environment": environment()}
    save(args.out, report)
    report["parity"] = parity(args.work)
    save(args.out, report)
    if not args.quick:
        report["timing"] = timing(args.work, args.batches, steps=25, seconds=10.0, repeats=3)
        save(args.out, report)
    print(json.dumps(report, indent=2)[:6000])


if __name__ == "__main__":
    main()
