"""Reference clips as neighbours ("more like this"): does a clip made with a reference sound like it?

    python benchmarks/experiments/reference_eval.py MANIFEST [--bundle B] [--clips 50] [--out F]

For ``--clips`` test clips of MANIFEST that are not in the bundle's database (evenly spread), each is
given as the only reference (``reference_mode`` replace) of a request whose prompt is its caption (seed
= its index, the reference's length). Every clip is embedded with aisfx (the FAD backbone) and scored by
cosine:

- ``own_beats_top1``: the share of results closer to their own reference than to the prompt's top-1
  database neighbour (the clip ``generate`` would have retrieved first);
- ``paired_minus_unpaired``: the mean cosine of each result with its own reference minus the mean with
  the other references (``reaudio eval``'s paired gain, with the reference as the real clip);

beside the same request without a reference (the database's k neighbours), copying the top-1
neighbour, and another real clip of the same caption where the test split has one (the real floor).
"""

from __future__ import annotations

import edit_experiment
import numpy as np

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.pipeline import Request
from reaudio.training.backbones import embed_at, load_backbone
from reaudio.training.evaluate import evenly_spaced, real_file
from reaudio.training.listening import paired_minus_unpaired


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _scores(results: np.ndarray, refs: np.ndarray, top1: np.ndarray) -> dict:
    own = np.sum(_unit(results) * _unit(refs), axis=1)
    to_top1 = np.sum(_unit(results) * _unit(top1), axis=1)
    return {
        "cosine_to_own_reference": round(float(own.mean()), 4),
        "cosine_to_top1_neighbour": round(float(to_top1.mean()), 4),
        "own_beats_top1": round(float(np.mean(own > to_top1)), 3),
        "paired_minus_unpaired": round(paired_minus_unpaired(results, refs), 4),
    }


def main() -> None:
    parser = edit_experiment.parser(__doc__)
    parser.add_argument("--clips", type=int, default=50)
    args = parser.parse_args()
    engine, clips = edit_experiment.open_engine(args)
    sr, mel_rate = engine.sample_rate, engine.manifest.mel.sample_rate
    in_db = {item["id"] for item in engine.db.items}
    held_out = [c for c in clips if c.split == "test" and c.id not in in_db]
    chosen = evenly_spaced(held_out, args.clips)
    by_id = {c.id: c for c in clips}
    waves = [load_audio(real_file(c, sr, mel_rate), sr) for c in chosen]
    top1_ids = edit_experiment.top1_ids(engine, [c.caption for c in chosen])
    top1 = [load_audio(real_file(by_id[i], sr, mel_rate), sr) for i in top1_ids]
    with_ref, plain = [], []
    for i, (clip, wave) in enumerate(zip(chosen, waves)):
        seconds = float(np.clip(len(wave) / sr, 0.25, engine.manifest.defaults.duration))
        with_ref.append(engine.generate([Request(clip.caption, seed=i, reference=[wave])])[0].waveform)
        plain.append(engine.generate([Request(clip.caption, seed=i, duration=seconds)])[0].waveform)
        print(f"{i + 1}/{len(chosen)} {clip.id}: {clip.caption!r}", flush=True)
    # Another held-out clip of the same caption: what a second real recording of it scores.
    twins = []
    for i, clip in enumerate(chosen):
        twin = next((c for c in held_out if c.caption == clip.caption and c.source != clip.source), None)
        if twin is not None:
            twins.append((i, load_audio(real_file(twin, sr, mel_rate), sr)))

    backbone = load_backbone("aisfx")
    refs, top = embed_at(backbone, waves, sr), embed_at(backbone, top1, sr)
    report = {
        "bundle": str(args.bundle),
        "clips": len(chosen),
        "not_in_database": True,
        "with_reference": _scores(embed_at(backbone, with_ref, sr), refs, top),
        "without_reference": _scores(embed_at(backbone, plain, sr), refs, top),
        "copy_top1_neighbour": {
            "cosine_to_own_reference": round(float(np.sum(_unit(top) * _unit(refs), axis=1).mean()), 4),
            "paired_minus_unpaired": round(paired_minus_unpaired(top, refs), 4),
        },
    }
    if len(twins) >= 2:
        idx = [i for i, _ in twins]
        twin_emb = embed_at(backbone, [w for _, w in twins], sr)
        report["real_same_caption"] = {
            "clips": len(twins),
            "cosine_to_own_reference": round(float(np.sum(_unit(twin_emb) * _unit(refs[idx]), axis=1).mean()), 4),
            "paired_minus_unpaired": round(paired_minus_unpaired(twin_emb, refs[idx]), 4),
        }
    edit_experiment.report(report, args.out)


if __name__ == "__main__":
    main()
