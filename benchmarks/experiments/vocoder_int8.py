"""Should the vocoder be int8 too? A bundle's decoder stage three ways, side by side: fp32, the
VAE decoder's convolutions in int8 (what ``reaudio quantize`` ships), and the vocoder's as well.

    python benchmarks/experiments/vocoder_int8.py BUNDLE --out DIR [--prompts 16] [--repeats 3] [--threads 2]
        [--variants NAME=PREFIX,PREFIX ...]

Calibration inputs come from the bundle's own fp32 generations (as ``reaudio quantize``); each
variant is compared with fp32 on held-back inputs (waveform SNR, mean log-mel difference) and timed
on one calibration batch, the variants interleaved, median of the repeats. Writes DIR/report.json
and the int8 graphs (DIR/NAME.onnx). ``--variants`` names other sets of node-name prefixes to
quantise (e.g. ``res=/decoder/,/vocoder/resblocks`` for the vocoder's residual blocks only).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from reaudio.engine.bundle.manifest import read_bundle_manifest
from reaudio.engine.stages.backends import OrtRunner
from reaudio.export.int8 import CALIBRATION_PROMPTS, Calibration, compare_graphs, quantize_graph, record_feeds

VARIANTS = {"vae": ("/decoder/",), "vae_vocoder": ("/decoder/", "/vocoder/")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", nargs="+", metavar="NAME=PREFIXES", help="instead of vae and vae_vocoder")
    args = parser.parse_args()
    variants = dict(VARIANTS)
    if args.variants:
        variants = {}
        for item in args.variants:
            name, _, prefixes = item.partition("=")
            if not name or not prefixes:
                parser.error(f"--variants {item!r}: give NAME=PREFIX[,PREFIX...]")
            variants[name] = tuple(prefixes.split(","))

    manifest = read_bundle_manifest(args.bundle)
    fp32 = args.bundle / manifest.stages["decoder"].file
    calibration = Calibration(prompts=CALIBRATION_PROMPTS[: args.prompts], steps=args.steps, threads=args.threads)
    feeds = record_feeds(args.bundle, calibration, progress=print)["decoder"]
    held_back, used = feeds[::4], [f for i, f in enumerate(feeds) if i % 4]
    args.out.mkdir(parents=True, exist_ok=True)
    graphs = {"fp32": fp32}
    report: dict = {
        "bundle": str(args.bundle),
        "calibration_inputs": len(used),
        "compared_on": len(held_back),
        "variants": {n: list(p) for n, p in variants.items()},
    }
    for name, scopes in variants.items():
        print(f"quantising {name} …", flush=True)
        graphs[name] = quantize_graph(fp32, args.out / f"{name}.onnx", used, scopes)
        report[name] = compare_graphs(fp32, graphs[name], held_back, args.threads, manifest.mel)
        print(name, report[name], flush=True)

    batch = feeds[0]
    sessions = {n: OrtRunner.session_for(p, ["CPUExecutionProvider"], args.threads) for n, p in graphs.items()}
    times: dict[str, list[float]] = {n: [] for n in sessions}
    for session in sessions.values():  # warm-up
        session.run(None, batch)
    for _ in range(args.repeats):
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, batch)
            times[name].append(time.perf_counter() - start)
    report["batch"] = int(np.asarray(batch["latent"]).shape[0])
    report["seconds_per_call"] = {n: round(statistics.median(t), 3) for n, t in times.items()}
    report["speedup_over_fp32"] = {
        n: round(report["seconds_per_call"]["fp32"] / s, 2) for n, s in report["seconds_per_call"].items()
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
