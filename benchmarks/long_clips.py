"""Long clips and loops on a bundle: time and peak memory by duration, and how the joints sound.

    python benchmarks/long_clips.py scale --bundle B --json scale.json      # 10, 60, 300 s
    python benchmarks/long_clips.py joints --bundle B --json joints.json    # 60-s ambiences, 8 s loops
    python benchmarks/long_clips.py quality --bundle B --data corpus/manifest.jsonl --json quality.json

``scale`` runs each duration in a fresh process (peak RSS is per process) and also the
one-shot path (the window stretched to the whole clip) where it fits in memory, for contrast.
``quality`` (needs the ``train`` extra and aisfx) scores 30-s ambiences 4 s at a time against the
test split's real ambiences: FAD (aisfx), CLAP score and level of the first, middle and last
4 s, beside one-shot 4-s clips of the same prompts, the copy-the-nearest-clip baseline and the
real-vs-real floor, every set the same size.
``joints`` measures the spectral change (flux), level change, step and click at the window
joints of long clips and at loop seams against ordinary points of the same clips.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

AMBIENCES = (
    "rain falling on a roof",
    "wind blowing through trees",
    "a river flowing",
    "a crowd murmurs",
    "a fire crackles",
    "an engine hums",
)


def measure_one(bundle: str, seconds: float, one_shot: bool, steps: int) -> dict:
    """Generate one clip in this process; time it and read this process's peak RSS."""
    import resource
    import time

    from reaudio.engine.pipeline import Engine, Request

    engine = Engine.from_bundle(bundle, backend="cpu")
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    request = Request(AMBIENCES[0], duration=seconds, seed=0, steps=steps, window=seconds if one_shot else None)
    start = time.perf_counter()
    (result,) = engine.generate([request])
    wall = time.perf_counter() - start
    resolved = engine.planner.resolve(request)
    return {
        "seconds": seconds,
        "one_shot": one_shot,
        "steps": steps,
        "wall_s": round(wall, 2),
        "windows": len(resolved.windows()) if resolved.windowed else 1,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "after_load_rss_mib": round(loaded_kib / 1024, 1),
        "ok": result.ok,
    }


def scale(args) -> list[dict]:
    rows = []
    for seconds, one_shot in [(s, False) for s in args.durations] + [(s, True) for s in args.one_shot]:
        code = (
            f"import json; from benchmarks.long_clips import measure_one; "
            f"print(json.dumps(measure_one({str(args.bundle)!r}, {seconds}, {one_shot}, {args.steps})))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent
        )
        if proc.returncode != 0:
            row = {
                "seconds": seconds,
                "one_shot": one_shot,
                "error": (proc.stderr.strip().splitlines() or ["?"])[-1],
            }
        else:
            row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(row, flush=True)
        rows.append(row)
    return rows


def joints(args) -> dict:
    from reaudio.engine.audio.seams import MEASURES, compare, loop_seam
    from reaudio.engine.denoising.window_plans import plan_decode
    from reaudio.engine.pipeline import Engine, Request

    engine = Engine.from_bundle(args.bundle, backend="cpu")
    per_frame = engine.manifest.latent.downsample * engine.manifest.mel.hop_length
    out: dict = {"long": [], "loops": []}
    for i, prompt in enumerate(AMBIENCES[: args.prompts]):
        request = Request(prompt, duration=args.long_seconds, seed=i, steps=args.steps)
        (result,) = engine.generate([request])
        r = engine.planner.resolve(request)
        windows = r.windows()
        edges = sorted({int(w[0]) for w in windows.indices[1:]} | {int(w[-1]) + 1 for w in windows.indices[:-1]})
        decode = plan_decode(r.frames, r.window, max(1, r.overlap // 2))
        joins = [(w.start + decode.fade) for w in decode.windows[1:]]
        x = result.waveform
        entry = {
            "prompt": prompt,
            "rms_db": round(float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-12)), 1),
        }
        for name, frames in (("denoise_window_edges", edges), ("decode_joins", joins)):
            report = compare(
                x,
                [f * per_frame for f in frames],
                engine.sample_rate,
                grid=per_frame,
                circular=False,
            )
            entry[name] = {
                "count": len(frames),
                "percentile": report.percentile,
                "at_joint": report.at_joint,
                "interior_median": report.interior_median,
            }
        out["long"].append(entry)
        print(json.dumps(entry), flush=True)
        looped, plain = engine.generate(
            [
                Request(prompt, duration=args.loop_seconds, seed=i, steps=args.steps, loop=True),
                Request(prompt, duration=args.loop_seconds, seed=i, steps=args.steps),
            ]
        )
        row = {"prompt": prompt}
        for name, clip in (("loop", looped), ("plain", plain)):
            report = loop_seam(clip.waveform, engine.sample_rate, grid=per_frame)
            row[name] = {"percentile": report.percentile, "worst": report.worst_percentile()}
        tiled = compare(
            np.tile(looped.waveform, 2), [len(looped.waveform)], engine.sample_rate, grid=per_frame, circular=False
        )
        row["loop_played_twice_click_percentile"] = tiled.percentile["click"]
        out["loops"].append(row)
        print(json.dumps(row), flush=True)
    for kind in ("denoise_window_edges", "decode_joins"):
        out[f"median_percentile_{kind}"] = {
            m: float(np.median([e[kind]["percentile"][m] for e in out["long"]])) for m in MEASURES
        }
    for kind in ("loop", "plain"):
        out[f"median_percentile_seam_{kind}"] = {
            m: float(np.median([e[kind]["percentile"][m] for e in out["loops"]])) for m in MEASURES
        }
    return out


#: Corpus labels of ambient, continuing sounds.
AMBIENCE_LABELS = (
    "birdsong_daytime",
    "wind",
    "desert_wind",
    "waterfall",
    "fire_crackle",
    "rain",
    "air_hum",
    "bubbling",
    "rumble",
    "bees",
    "bee",
    "river",
    "stream",
    "crowd",
    "engine_hum",
)


def quality(args) -> dict:
    from reaudio.engine.audio.audio_io import load_audio
    from reaudio.engine.pipeline import Engine, Request
    from reaudio.training.backbones import embed_at, load_backbone
    from reaudio.training.data import read_corpus
    from reaudio.training.evaluate import evenly_spaced
    from reaudio.training.metrics import fad

    clips = read_corpus(args.data)
    real = [c for c in clips if c.split == "test" and c.label in AMBIENCE_LABELS]
    others = [c for c in clips if c.split == "train" and c.label in AMBIENCE_LABELS]
    prompts = evenly_spaced(real, args.clips)
    engine = Engine.from_bundle(args.bundle, backend="cpu")
    sr, seg = engine.sample_rate, int(4 * engine.sample_rate)
    backbone = load_backbone("aisfx")
    real_emb = embed_at(backbone, [load_audio(c.audio, sr) for c in real], sr)
    sets: dict[str, list[np.ndarray]] = {
        "one_shot_4s": [],
        "long_first_4s": [],
        "long_middle_4s": [],
        "long_last_4s": [],
    }
    long_seconds = args.long_seconds
    middle = int((long_seconds / 2 - 2) * sr)
    for i, clip in enumerate(prompts):
        short, long = engine.generate(
            [
                Request(clip.caption, duration=4.0, seed=i, steps=args.steps),
                Request(clip.caption, duration=long_seconds, seed=i, steps=args.steps),
            ]
        )
        sets["one_shot_4s"].append(short.waveform)
        sets["long_first_4s"].append(long.waveform[:seg])
        sets["long_middle_4s"].append(long.waveform[middle : middle + seg])
        sets["long_last_4s"].append(long.waveform[-seg:])
        print(f"{i + 1}/{len(prompts)} {clip.caption}", flush=True)
    text_emb, _, _ = engine.embed_text([c.caption for c in prompts])
    top1 = engine.db.search(text_emb, 1, mode=engine.planner.default_retrieval)[:, 0]
    audio_of = {c.id: c.audio for c in clips}
    sets["copy_top1"] = [load_audio(audio_of[engine.db.items[r]["id"]], sr)[:seg] for r in top1]
    sets["real_floor"] = [load_audio(c.audio, sr) for c in evenly_spaced(others, len(prompts))]
    out = {
        "clips": len(prompts),
        "real_reference_clips": len(real),
        "long_seconds": long_seconds,
        "sets": {},
    }
    for name, waves in sets.items():
        audio_emb, _ = engine.encode_audio(waves)
        level = [10 * np.log10(np.mean(np.square(w, dtype=np.float64)) + 1e-12) for w in waves]
        out["sets"][name] = {
            "fad": round(fad(real_emb, embed_at(backbone, waves, sr)), 1),
            "clap_score": round(float(np.mean(np.sum(audio_emb * text_emb, axis=1))), 3),
            "rms_dbfs_median": round(float(np.median(level)), 1),
        }
        print(name, out["sets"][name], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scale")
    s.add_argument("--durations", type=float, nargs="+", default=[10.0, 60.0, 300.0])
    s.add_argument(
        "--one-shot",
        type=float,
        nargs="*",
        default=[10.0, 30.0],
        help="durations to run without windows",
    )
    j = sub.add_parser("joints")
    j.add_argument("--prompts", type=int, default=len(AMBIENCES))
    j.add_argument("--long-seconds", type=float, default=60.0)
    j.add_argument("--loop-seconds", type=float, default=8.0)
    q = sub.add_parser("quality")
    q.add_argument(
        "--data",
        type=Path,
        required=True,
        help="the corpus clip manifest (test split: the real clips)",
    )
    q.add_argument("--clips", type=int, default=16)
    q.add_argument("--long-seconds", type=float, default=30.0)
    for p in (s, j, q):
        p.add_argument("--bundle", required=True)
        p.add_argument("--steps", type=int, default=25)
        p.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {"scale": scale, "joints": joints, "quality": quality}[args.what](args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
