"""Does the generated clips' level cost FAD? Score the same clips as generated, brought to their
retrieved neighbours' loudness, and brought to their own real clip's loudness (an oracle).

    python benchmarks/experiments/level_from_neighbours.py BUNDLE CORPUS/manifest.jsonl [--limit 100] [--out F]

Every set is scored on the same test clips as ``reaudio eval`` picks (evenly spaced over the
split, durations of the real clips up to the bundle's length, seed = index), beside the
copy-the-top-1-neighbour baseline and the real-vs-real floor. Level: BS.1770 integrated
loudness (pyloudnorm); a gain never lets a clip pass -0.1 dBFS.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.audio.loudness import integrated_lufs
from reaudio.engine.pipeline import Engine, Request
from reaudio.training.backbones import embed_at, load_backbone
from reaudio.training.data import read_corpus
from reaudio.training.evaluate import evenly_spaced
from reaudio.training.listening import listener_metrics
from reaudio.training.metrics import fad

CEILING = 10 ** (-0.1 / 20)


def _to_loudness(wav: np.ndarray, sr: int, target: float) -> np.ndarray:
    level = integrated_lufs(wav, sr)
    if not np.isfinite(level) or not np.isfinite(target):
        return wav
    out = wav * 10 ** ((target - level) / 20)
    peak = float(np.max(np.abs(out))) if len(out) else 0.0
    return (out * (CEILING / peak) if peak > CEILING else out).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    clips = read_corpus(args.data)
    split = [c for c in clips if c.split == "test"]
    test = evenly_spaced(split, args.limit)
    others = [c for c in split if c not in test]
    audio_of = {c.id: c.audio for c in clips}
    engine = Engine.from_bundle(args.bundle, backend="cpu")
    sr, longest = engine.sample_rate, engine.manifest.defaults.duration
    real = [load_audio(c.audio, sr) for c in test]
    durations = [min(max(len(w) / sr, 0.5), longest) for w in real]
    results = engine.generate([Request(c.caption, duration=d, seed=i) for i, (c, d) in enumerate(zip(test, durations))])
    real = [w[: len(r.waveform)] for w, r in zip(real, results)]
    generated = [r.waveform for r in results]
    neighbour_level = []
    for r in results:
        levels = [integrated_lufs(load_audio(audio_of[n["id"]], sr)[: round(longest * sr)], sr) for n in r.neighbours]
        levels = [v for v in levels if np.isfinite(v)]
        neighbour_level.append(float(np.median(levels)) if levels else float("nan"))
    sets = {
        "generated": generated,
        "generated_at_neighbour_loudness": [_to_loudness(g, sr, t) for g, t in zip(generated, neighbour_level)],
        "generated_at_own_real_loudness (oracle)": [
            _to_loudness(g, sr, integrated_lufs(w, sr)) for g, w in zip(generated, real)
        ],
        "copy_top1": [load_audio(audio_of[r.neighbours[0]["id"]], sr)[: len(w)] for r, w in zip(results, real)],
    }
    backbone = load_backbone("aisfx")
    real_emb = embed_at(backbone, real, sr)
    floor = [load_audio(c.audio, sr) for c in evenly_spaced(others, len(test))]
    out = {"clips": len(test), "real_floor_fad": round(fad(real_emb, embed_at(backbone, floor, sr)), 1), "sets": {}}
    real_lufs = [integrated_lufs(w, sr) for w in real]
    for name, waves in sets.items():
        emb = embed_at(backbone, waves, sr)
        lufs = [integrated_lufs(w, sr) for w in waves]
        error = [a - b for a, b in zip(lufs, real_lufs) if np.isfinite(a) and np.isfinite(b)]
        row = {"fad": round(fad(real_emb, emb), 1), "loudness_error_db_median": round(float(np.median(error)), 1)}
        row.update({k: v for k, v in listener_metrics(waves, real, emb, real_emb, sr).items()})
        out["sets"][name] = row
        print(name, json.dumps(row), flush=True)
    print("real floor FAD", out["real_floor_fad"])
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
