"""Side-by-side throughput: diffusers' AudioLDMPipeline vs the reaudio engine, same weights.

    python benchmarks/compare_diffusers.py [--size audioldm-s] [--threads 2] [--batches 1 4]

Builds a random-initialised diffusers AudioLDM pipeline (AudioLDM-S sizes by
default; nothing is downloaded), imports it into a bundle, then times both in
this one process on the same prompts, initial latents, steps and guidance:
warm-up, then alternating runs, median of --repeats. Also checks that both
produce the same waveforms. Prints a table and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROMPTS = ["footsteps on gravel", "a wooden door creaks open", "rain falls on a tin roof", "a dog barks twice",
           "glass shatters on stone", "wind howls through a gap", "a crackling campfire", "a bell tolls once"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="audioldm-s", choices=("audioldm-s", "tiny"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/reaudio-compare"), help="cache for pipeline+bundle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=2.5)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusers import AudioLDMPipeline

    from reaudio.engine.engine import Engine, Request
    from reaudio.export.import_audioldm import import_audioldm
    from tests.make_tiny_audioldm import make

    work = args.work / args.size
    pipeline_dir, bundle = work / "pipeline", work / "bundle"
    if not (pipeline_dir / "model_index.json").is_file():
        print(f"building a random {args.size} diffusers pipeline in {pipeline_dir} …", flush=True)
        make(work, args.size)
    if not (bundle / "manifest.json").is_file():
        print(f"importing into {bundle} …", flush=True)
        import_audioldm(pipeline_dir, bundle, overwrite=True)

    pipe = AudioLDMPipeline.from_pretrained(str(pipeline_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    engine = Engine.from_bundle(bundle, backend="cpu", threads=args.threads)
    m = engine.manifest
    r, hop, sr = m.latent.downsample, m.mel.hop_length, m.sample_rate
    frames = -(-round(args.seconds * sr) // (r * hop))
    seconds = frames * r * hop / sr  # both sides get exactly this length

    rows = []
    for batch in args.batches:
        prompts = PROMPTS[:batch]
        latents = np.random.default_rng(batch).standard_normal(
            (batch, m.latent.channels, frames, m.latent.freq)).astype(np.float32)  # fmt: skip

        def run_diffusers(prompts=prompts, latents=latents):
            return pipe(prompts, audio_length_in_s=seconds, num_inference_steps=args.steps,
                        guidance_scale=args.guidance, latents=torch.from_numpy(latents), output_type="np").audios  # fmt: skip

        def run_engine(prompts=prompts, latents=latents, batch=batch):
            reqs = [Request(p, initial_latent=lat, steps=args.steps, guidance=args.guidance, sampler="ddim")
                    for p, lat in zip(prompts, latents)]  # fmt: skip
            return np.stack([res.waveform for res in engine.generate(reqs, batch_size=batch)])

        ref, ours = run_diffusers(), run_engine()  # warm-up, and the equivalence check
        rel = float(np.abs(ref - ours).max() / np.abs(ref).max())
        times = {"diffusers": [], "reaudio": []}
        for _ in range(args.repeats):
            for name, fn in (("diffusers", run_diffusers), ("reaudio", run_engine)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "batch": batch,
            "diffusers_s": med["diffusers"],
            "reaudio_s": med["reaudio"],
            "diffusers_clips_per_s": batch / med["diffusers"],
            "reaudio_clips_per_s": batch / med["reaudio"],
            "throughput_ratio": med["diffusers"] / med["reaudio"],
            "max_abs_diff_rel_peak": rel,
            "runs": times,
        }
        rows.append(row)
        print(f"batch {batch}: diffusers {med['diffusers']:.2f} s, reaudio {med['reaudio']:.2f} s "
              f"(median of {args.repeats}) → {row['throughput_ratio']:.2f}× throughput; "
              f"waveforms agree to {rel:.1e} of peak", flush=True)  # fmt: skip

    report = {
        "size": args.size, "threads": args.threads, "seconds": seconds, "steps": args.steps,
        "guidance": args.guidance, "machine": platform.platform(), "processor": platform.processor(),
        "torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__,
        "diffusers": __import__("diffusers").__version__, "results": rows,
    }  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({r["batch"]: round(r["throughput_ratio"], 2) for r in rows}))


if __name__ == "__main__":
    main()
