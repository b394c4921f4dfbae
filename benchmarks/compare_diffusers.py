"""Side-by-side throughput: diffusers' AudioLDMPipeline vs the reaudio engine, same weights.

    python benchmarks/compare_diffusers.py [--size audioldm-s] [--threads 2] [--batches 1 4]
        [--precisions fp32 int8 int8-vocoder]

Builds a random-initialised diffusers AudioLDM pipeline (AudioLDM-S sizes by
default; nothing is downloaded), imports it into a bundle (quantised too when
int8 is asked for: ``reaudio quantize``'s calibration; ``int8-vocoder``: a copy quantised with
``--vocoder``, the vocoder's convolutions in int8 too), then times diffusers and
the engine at each precision in this one process on the same prompts, initial
latents, steps and guidance: warm-up, then alternating runs, median of
--repeats; per-stage times come from ``reaudio bench``'s stage timers. Also
checks how close each precision's waveforms are to diffusers'. Prints a table
and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


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
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=("fp32", "int8", "int8-vocoder"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusers import AudioLDMPipeline

    from reaudio.engine.bundle.manifest import read_bundle_manifest
    from reaudio.engine.jobs.bench import PROMPTS, machine_info, timed_stages
    from reaudio.engine.pipeline import Engine, Request
    from reaudio.export.import_audioldm import import_audioldm
    from reaudio.export.int8 import CALIBRATION_PROMPTS, Calibration, quantize_bundle, snr_db
    from reaudio.training.toy_audioldm import make

    work = args.work / args.size
    pipeline_dir, bundle = work / "pipeline", work / "bundle"
    if not (pipeline_dir / "model_index.json").is_file():
        print(f"building a random {args.size} diffusers pipeline in {pipeline_dir} …", flush=True)
        make(work, args.size)
    if not (bundle / "manifest.json").is_file():
        print(f"importing into {bundle} …", flush=True)
        import_audioldm(pipeline_dir, bundle, overwrite=True)

    if "int8" in args.precisions and read_bundle_manifest(bundle).stages["denoiser"].int8_file is None:
        print(f"quantising {bundle} (calibration on the bundle's own generations) …", flush=True)
        calibration = Calibration(prompts=CALIBRATION_PROMPTS[:16], threads=args.threads)  # a speed test: 16 suffice
        quantize_bundle(bundle, calibration=calibration, progress=print)

    pipe = AudioLDMPipeline.from_pretrained(str(pipeline_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    with_vocoder = work / "bundle-int8-vocoder"
    if "int8-vocoder" in args.precisions and not (with_vocoder / "manifest.json").is_file():
        print(f"quantising a copy with the vocoder in int8 too: {with_vocoder} …", flush=True)
        calibration = Calibration(prompts=CALIBRATION_PROMPTS[:16], threads=args.threads)
        quantize_bundle(bundle, with_vocoder, calibration, progress=print, vocoder=True)
    graphs = {"fp32": (bundle, "fp32"), "int8": (bundle, "int8"), "int8-vocoder": (with_vocoder, "int8")}
    engines = {
        p: Engine.from_bundle(graphs[p][0], backend="cpu", threads=args.threads, precision=graphs[p][1])
        for p in args.precisions
    }
    m = engines[args.precisions[0]].manifest
    r, hop, sr = m.latent.downsample, m.mel.hop_length, m.sample_rate
    frames = -(-round(args.seconds * sr) // (r * hop))
    seconds = frames * r * hop / sr  # both sides get exactly this length

    rows = []
    for batch in args.batches:
        prompts = list(PROMPTS[:batch])
        latents = (
            np.random.default_rng(batch)
            .standard_normal((batch, m.latent.channels, frames, m.latent.freq))
            .astype(np.float32)
        )

        def run_diffusers(prompts=prompts, latents=latents):
            return pipe(
                prompts,
                audio_length_in_s=seconds,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                latents=torch.from_numpy(latents),
                output_type="np",
            ).audios

        def run_engine(engine, prompts=prompts, latents=latents, batch=batch):
            reqs = [
                Request(p, initial_latent=lat, steps=args.steps, guidance=args.guidance, sampler="ddim")
                for p, lat in zip(prompts, latents)
            ]
            return np.stack([res.waveform for res in engine.generate(reqs, batch_size=batch)])

        ref = run_diffusers()  # warm-up, and the reference waveforms
        closeness = {}
        for precision, engine in engines.items():
            ours = run_engine(engine)
            closeness[precision] = {
                "max_abs_diff_rel_peak": float(np.abs(ref - ours).max() / np.abs(ref).max()),
                "snr_db_vs_diffusers": snr_db(ref, ours),
            }
        times = {"diffusers": [], **{p: [] for p in engines}}
        stages = {p: {} for p in engines}
        for _ in range(args.repeats):
            for name in times:
                start = time.perf_counter()
                if name == "diffusers":
                    run_diffusers()
                else:
                    with timed_stages(engines[name]) as calls:
                        run_engine(engines[name])
                    for stage, spent in calls.items():
                        per = spent if stage == "denoiser" else [sum(spent)]
                        stages[name].setdefault(stage, []).extend(per)
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {
            "batch": batch,
            "diffusers_s": med["diffusers"],
            "diffusers_clips_per_s": batch / med["diffusers"],
            "runs": times,
            "engine": {},
        }
        for p in engines:
            row["engine"][p] = {
                "seconds": med[p],
                "clips_per_s": batch / med[p],
                "throughput_ratio": med["diffusers"] / med[p],
                "stage_median_s": {k: statistics.median(v) for k, v in stages[p].items()},
                **closeness[p],
            }
            print(
                f"batch {batch}: diffusers {med['diffusers']:.2f} s, reaudio {p} {med[p]:.2f} s "
                f"(median of {args.repeats}) → {med['diffusers'] / med[p]:.2f}× throughput; "
                f"waveform SNR vs diffusers {closeness[p]['snr_db_vs_diffusers']:.1f} dB, max diff "
                f"{closeness[p]['max_abs_diff_rel_peak']:.1e} of peak; stages "
                + ", ".join(f"{k} {v:.2f} s" for k, v in row["engine"][p]["stage_median_s"].items()),
                flush=True,
            )
        rows.append(row)

    report = {
        "size": args.size,
        "threads": args.threads,
        "seconds": seconds,
        "steps": args.steps,
        "guidance": args.guidance,
        "machine": machine_info(),
        "torch": torch.__version__,
        "diffusers": __import__("diffusers").__version__,
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps({r["batch"]: {p: round(e["throughput_ratio"], 2) for p, e in r["engine"].items()} for r in rows}))


if __name__ == "__main__":
    main()
