"""Continuing a clip: the new part against the real continuation and the copy baseline, and the join.

    python benchmarks/experiments/continuation_eval.py MANIFEST [--bundle B] [--clips 50] [--keep 1.5] [--out F]

For ``--clips`` test clips of MANIFEST at least ``keep`` + ``extend`` s long (evenly spread), the first
``keep`` seconds are the start clip and ``--extend`` seconds are generated after them with the clip's
caption (seed = its index):

- FAD (aisfx) of the generated continuations, of the same span of the prompt's top-1 retrieved clip
  (the copy baseline) and of the same span of other test clips (the real floor), each against the
  clips' real continuations;
- the seam measures (``reaudio.engine.audio.seams``) at the join, as percentiles of the same clip's
  ordinary points (50: like any point; the loop standard asks at most 85), beside the real clip's own
  join point;
- that every sample of the start clip more than the edge cross-fade away from the join is kept.
"""

from __future__ import annotations

import edit_experiment
import numpy as np

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.audio.seams import MEASURES, compare
from reaudio.engine.audio.splice import EDGE_FADE_SECONDS
from reaudio.engine.pipeline import Request
from reaudio.training.backbones import embed_at, load_backbone
from reaudio.training.evaluate import evenly_spaced, real_file
from reaudio.training.metrics import fad


def main() -> None:
    parser = edit_experiment.parser(__doc__)
    parser.add_argument("--clips", type=int, default=50)
    parser.add_argument("--keep", type=float, default=1.5)
    parser.add_argument("--extend", type=float, default=1.0)
    args = parser.parse_args()
    engine, clips = edit_experiment.open_engine(args)
    sr, mel_rate = engine.sample_rate, engine.manifest.mel.sample_rate
    test = [c for c in clips if c.split == "test"]
    waves = {c.id: load_audio(real_file(c, sr, mel_rate), sr) for c in test}
    keep, extend = round(args.keep * sr), round(args.extend * sr)
    long_enough = [c for c in test if len(waves[c.id]) >= keep + extend]
    chosen = evenly_spaced(long_enough, args.clips)
    others = evenly_spaced([c for c in long_enough if c not in chosen], len(chosen))
    by_id = {c.id: c for c in clips}
    top1 = edit_experiment.top1_ids(engine, [c.caption for c in chosen])
    fade = round(EDGE_FADE_SECONDS * sr)
    made, copies, real, floor, seams, seams_real, kept = [], [], [], [], [], [], []
    for i, (clip, neighbour_id) in enumerate(zip(chosen, top1)):
        wave = waves[clip.id]
        out = engine.generate([Request(clip.caption, init_audio=wave[:keep], extend=args.extend, seed=i)])[0].waveform
        join = keep
        kept.append(bool(np.array_equal(out[: join - fade], wave[: join - fade])))
        made.append(out[join : join + extend])
        real.append(wave[join : join + extend])
        neighbour = load_audio(real_file(by_id[neighbour_id], sr, mel_rate), sr)
        copies.append(np.pad(neighbour, (0, max(0, join + extend - len(neighbour))))[join : join + extend])
        seams.append(compare(out[: join + extend], [join], sr, circular=False))
        seams_real.append(compare(wave[: join + extend], [join], sr, circular=False))
        print(f"{i + 1}/{len(chosen)} {clip.id}: kept exactly {kept[-1]}", flush=True)
    for clip in others:
        floor.append(waves[clip.id][keep : keep + extend])

    backbone = load_backbone("aisfx")
    reference = embed_at(backbone, real, sr)
    report = {
        "bundle": str(args.bundle),
        "clips": len(chosen),
        "keep_seconds": args.keep,
        "extend_seconds": args.extend,
        "kept_exactly": int(sum(kept)),
        "fad": {
            "continuation": fad(reference, embed_at(backbone, made, sr)),
            "copy_top1_same_span": fad(reference, embed_at(backbone, copies, sr)),
            "real_other_clips": fad(reference, embed_at(backbone, floor, sr)),
        },
        "seam_percentile_median": {m: float(np.median([s.percentile[m] for s in seams])) for m in MEASURES},
        "seam_percentile_p90": {m: float(np.percentile([s.percentile[m] for s in seams], 90)) for m in MEASURES},
        "seam_within_85th": float(np.mean([s.worst_percentile() <= 85 for s in seams])),
        "real_clip_same_point_percentile_median": {
            m: float(np.median([s.percentile[m] for s in seams_real])) for m in MEASURES
        },
    }
    edit_experiment.report(report, args.out)


if __name__ == "__main__":
    main()
