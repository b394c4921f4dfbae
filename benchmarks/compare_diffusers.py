"""Side-by-side throughput: diffusers' AudioLDMPipeline vs the reaudio engine, same weights.

    python benchmarks/compare_diffusers.py [--size audioldm-s] [--threads 2] [--batches 1 4]
        [--engines fp32 int8 openvino-fp32 openvino-bf16 openvino-int8-bf16 tuned]
        [--diffusers fp32 bf16-autocast compile]

Builds a random-initialised diffusers AudioLDM pipeline (AudioLDM-S sizes by
default; nothing is downloaded) and imports it into a bundle. Engine columns:
onnxruntime ``fp32`` and ``int8`` (``reaudio quantize``'s calibration; ``int8-vocoder``:
a copy quantised with ``--vocoder``), OpenVINO ``openvino-fp32``, ``openvino-bf16`` and
``openvino-int8-bf16`` (the int8 graphs, bf16 wherever they are not int8),
and ``tuned``: the per-stage precisions ``reaudio tune`` chose for this bundle on this
machine, on the backend it found faster. diffusers columns: ``fp32``,
``bf16-autocast`` (``torch.autocast("cpu", dtype=torch.bfloat16)``, which uses AMX or
AVX-512 BF16 where the CPU has them) and ``compile`` (``torch.compile`` of the UNet, when
it compiles here). Every column runs in this one process on the same prompts, initial
latents, steps and guidance: warm-up, then the columns in turn, --repeats times; medians.
Per-stage times come from ``reaudio bench``'s stage timers; each column's waveforms are
compared with diffusers fp32's. Prints a table and writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

ENGINE_COLUMNS = ("fp32", "int8", "int8-vocoder", "openvino-fp32", "openvino-bf16", "openvino-int8-bf16", "tuned")
DIFFUSERS_COLUMNS = ("fp32", "bf16-autocast", "compile")


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
    parser.add_argument(
        "--engines",
        nargs="+",
        default=["fp32", "int8", "openvino-fp32", "openvino-bf16", "openvino-int8-bf16", "tuned"],
        choices=ENGINE_COLUMNS,
    )
    parser.add_argument(
        "--diffusers",
        nargs="+",
        default=["fp32", "bf16-autocast", "compile"],
        choices=DIFFUSERS_COLUMNS,
        help="diffusers columns; fp32 is always run (the reference)",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from diffusers import AudioLDMPipeline

    from reaudio.engine.bundle.manifest import TUNING_REPORT, read_bundle_manifest
    from reaudio.engine.jobs.bench import PROMPTS, describe_cpu, machine_info, timed_stages
    from reaudio.engine.jobs.tuning import TuneSettings, tune_locked
    from reaudio.engine.pipeline import Engine, Request
    from reaudio.export.import_audioldm import import_audioldm
    from reaudio.export.int8 import CALIBRATION_PROMPTS, Calibration, quantize_bundle, snr_db
    from reaudio.training.toy_audioldm import make

    print(f"machine: {describe_cpu(machine_info())}", flush=True)
    work = args.work / args.size
    pipeline_dir, bundle = work / "pipeline", work / "bundle"
    if not (pipeline_dir / "model_index.json").is_file():
        print(f"building a random {args.size} diffusers pipeline in {pipeline_dir} …", flush=True)
        make(work, args.size)
    if not (bundle / "manifest.json").is_file():
        print(f"importing into {bundle} …", flush=True)
        import_audioldm(pipeline_dir, bundle, overwrite=True)

    wants_int8 = {"int8", "openvino-int8-bf16", "tuned"} & set(args.engines)
    if wants_int8 and read_bundle_manifest(bundle).stages["denoiser"].int8_file is None:
        print(f"quantising {bundle} (calibration on the bundle's own generations) …", flush=True)
        calibration = Calibration(prompts=CALIBRATION_PROMPTS[:16], threads=args.threads)  # a speed test: 16 suffice
        # Every convolution in int8: random weights have no sound for the sensitivity pass to keep.
        quantize_bundle(bundle, calibration=calibration, progress=print, target_snr_db=None)
    with_vocoder = work / "bundle-int8-vocoder"
    if "int8-vocoder" in args.engines and not (with_vocoder / "manifest.json").is_file():
        print(f"quantising a copy with the vocoder in int8 too: {with_vocoder} …", flush=True)
        calibration = Calibration(prompts=CALIBRATION_PROMPTS[:16], threads=args.threads)
        quantize_bundle(bundle, with_vocoder, calibration, progress=print, vocoder=True, target_snr_db=None)
    if "tuned" in args.engines and not (bundle / TUNING_REPORT).is_file():
        print(f"tuning {bundle}: each stage's precision on onnxruntime and OpenVINO …", flush=True)
        tune_locked(bundle, TuneSettings(threads=args.threads, duration=args.seconds), progress=print)
    graphs = {
        "fp32": (bundle, "cpu", "fp32"),
        "int8": (bundle, "cpu", "int8"),
        "int8-vocoder": (with_vocoder, "cpu", "int8"),
        "openvino-fp32": (bundle, "openvino", "fp32"),
        "openvino-bf16": (bundle, "openvino", "bf16"),
        "openvino-int8-bf16": (bundle, "openvino", "int8-bf16"),
        "tuned": (bundle, "auto", "auto"),
    }
    engines = {
        c: Engine.from_bundle(graphs[c][0], backend=graphs[c][1], threads=args.threads, precision=graphs[c][2])
        for c in args.engines
    }
    if "tuned" in engines:
        print(f"tuned: {engines['tuned'].backend}, {engines['tuned'].stage_precision}", flush=True)

    pipe = AudioLDMPipeline.from_pretrained(str(pipeline_dir), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    compiled = None
    if "compile" in args.diffusers:
        compiled = AudioLDMPipeline.from_pretrained(str(pipeline_dir), local_files_only=True)
        compiled.set_progress_bar_config(disable=True)
        compiled.unet = torch.compile(compiled.unet)
    m = engines[args.engines[0]].manifest
    r, hop, sr = m.latent.downsample, m.mel.hop_length, m.sample_rate
    frames = -(-round(args.seconds * sr) // (r * hop))
    seconds = frames * r * hop / sr  # both sides get exactly this length

    rows, skipped = [], {}
    for batch in args.batches:
        prompts = list(PROMPTS[:batch])
        latents = (
            np.random.default_rng(batch)
            .standard_normal((batch, m.latent.channels, frames, m.latent.freq))
            .astype(np.float32)
        )

        def run_diffusers(column, prompts=prompts, latents=latents):
            pipeline = compiled if column == "compile" else pipe
            autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=column == "bf16-autocast")
            with torch.inference_mode(), autocast:
                out = pipeline(
                    prompts,
                    audio_length_in_s=seconds,
                    num_inference_steps=args.steps,
                    guidance_scale=args.guidance,
                    latents=torch.from_numpy(latents),
                    output_type="np",
                ).audios
            return np.asarray(out, dtype=np.float32)

        def run_engine(engine, prompts=prompts, latents=latents, batch=batch):
            reqs = [
                Request(p, initial_latent=lat, steps=args.steps, guidance=args.guidance, sampler="ddim")
                for p, lat in zip(prompts, latents)
            ]
            return np.stack([res.waveform for res in engine.generate(reqs, batch_size=batch)])

        ref = run_diffusers("fp32")  # warm-up, and the reference waveforms
        columns = {f"diffusers {c}": (lambda c=c: run_diffusers(c)) for c in ["fp32", *args.diffusers] if c != "fp32"}
        columns = {"diffusers fp32": lambda: run_diffusers("fp32"), **columns}
        columns.update({f"reaudio {c}": (lambda e=e: run_engine(e)) for c, e in engines.items()})
        closeness = {}
        for name, run in list(columns.items()):
            try:
                ours = run()  # warm-up (torch.compile compiles here), and the distance to diffusers fp32
            except Exception as exc:  # noqa: BLE001 - a column that cannot run here is reported, not fatal
                skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
                print(f"{name}: does not run here ({skipped[name]})", flush=True)
                del columns[name]
                continue
            closeness[name] = {
                "max_abs_diff_rel_peak": float(np.abs(ref - ours).max() / np.abs(ref).max()),
                "snr_db_vs_diffusers_fp32": snr_db(ref, ours),
            }
        times = {name: [] for name in columns}
        stages = {name: {} for name in columns}
        for _ in range(args.repeats):
            for name, run in columns.items():
                engine = engines.get(name.removeprefix("reaudio ")) if name.startswith("reaudio ") else None
                start = time.perf_counter()
                if engine is None:
                    run()
                else:
                    with timed_stages(engine) as calls:
                        run()
                    for stage, spent in calls.items():
                        per = spent if stage == "denoiser" else [sum(spent)]
                        stages[name].setdefault(stage, []).extend(per)
                times[name].append(time.perf_counter() - start)
        med = {k: statistics.median(v) for k, v in times.items()}
        base = med["diffusers fp32"]
        row = {"batch": batch, "runs": times, "columns": {}}
        for name in columns:
            row["columns"][name] = {
                "seconds": med[name],
                "clips_per_s": batch / med[name],
                "vs_diffusers_fp32": base / med[name],
                "stage_median_s": {k: statistics.median(v) for k, v in stages[name].items()},
                **closeness[name],
            }
            for other in ("diffusers bf16-autocast", "diffusers compile"):
                if other in med:
                    row["columns"][name][f"vs_{other.replace(' ', '_')}"] = med[other] / med[name]
            print(
                f"batch {batch}: {name} {med[name]:.2f} s (median of {args.repeats}) → {base / med[name]:.2f}× "
                f"diffusers fp32; waveform SNR vs diffusers fp32 {closeness[name]['snr_db_vs_diffusers_fp32']:.1f} dB"
                + (
                    "; stages " + ", ".join(f"{k} {v:.2f} s" for k, v in row["columns"][name]["stage_median_s"].items())
                    if stages[name]
                    else ""
                ),
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
        "did_not_run": skipped,
        "tuned": {"backend": engines["tuned"].backend, "stage_precision": engines["tuned"].stage_precision}
        if "tuned" in engines
        else None,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(
        json.dumps({r["batch"]: {c: round(e["vs_diffusers_fp32"], 2) for c, e in r["columns"].items()} for r in rows})
    )


if __name__ == "__main__":
    main()
