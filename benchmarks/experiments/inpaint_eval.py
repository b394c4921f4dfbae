"""Inpainting a 1-s gap in real clips: the gap against its real content and the copy baseline, and its seams.

    python benchmarks/experiments/inpaint_eval.py MANIFEST [--bundle B] [--clips 50] [--gap 1.0] [--out F]

For ``--clips`` test clips of MANIFEST at least ``gap`` + 1 s long (evenly spread), the middle ``gap``
seconds are regenerated with ``--inpaint`` and the clip's caption as the prompt (seed = its index):

- FAD (aisfx) of the regenerated gaps, of the same span copied from the prompt's top-1 retrieved clip
  (the copy baseline) and of the same span of other test clips (the real-vs-real floor), each against
  the real gaps;
- the seam measures (``reaudio.engine.audio.seams``) at the gap's two edges, as percentiles of the same
  clip's ordinary points (50: like any point; the loop standard asks at most 85), beside the same
  points of the real clip;
- that every sample more than the edge cross-fade away from the gap is the real clip's.
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
    parser.add_argument("--gap", type=float, default=1.0)
    args = parser.parse_args()
    engine, clips = edit_experiment.open_engine(args)
    sr, mel_rate = engine.sample_rate, engine.manifest.mel.sample_rate
    test = [c for c in clips if c.split == "test"]
    waves = {c.id: load_audio(real_file(c, sr, mel_rate), sr) for c in test}
    long_enough = [c for c in test if len(waves[c.id]) >= (args.gap + 1.0) * sr]
    chosen = evenly_spaced(long_enough, args.clips)
    others = evenly_spaced([c for c in long_enough if c not in chosen], len(chosen))
    audio_of = {c.id: c for c in clips}

    gaps, copies, real_gaps, floor_gaps, seams, seams_real, exact = [], [], [], [], [], [], []
    fade = round(EDGE_FADE_SECONDS * sr)
    top1 = edit_experiment.top1_ids(engine, [c.caption for c in chosen])
    for i, (clip, neighbour_id) in enumerate(zip(chosen, top1)):
        wave = waves[clip.id]
        start = (len(wave) / sr - args.gap) / 2
        request = Request(clip.caption, init_audio=wave, inpaint=f"{start:.4f}:{start + args.gap:.4f}", seed=i)
        ((a, b),) = engine.planner.resolve(request).edit.generated  # the samples the engine regenerates
        out = engine.generate([request])[0].waveform
        exact.append(
            bool(
                np.array_equal(out[: a - fade], wave[: a - fade]) and np.array_equal(out[b + fade :], wave[b + fade :])
            )
        )
        gaps.append(out[a:b])
        real_gaps.append(wave[a:b])
        neighbour = load_audio(real_file(audio_of[neighbour_id], sr, mel_rate), sr)
        copies.append(np.pad(neighbour, (0, max(0, b - len(neighbour))))[a:b])
        seams.append(compare(out, [a, b], sr, circular=False))
        seams_real.append(compare(wave, [a, b], sr, circular=False))
        print(f"{i + 1}/{len(chosen)} {clip.id}: kept exactly {exact[-1]}", flush=True)
    for clip in others:
        wave = waves[clip.id]
        start = round((len(wave) / sr - args.gap) / 2 * sr)
        floor_gaps.append(wave[start : start + round(args.gap * sr)])

    backbone = load_backbone("aisfx")
    reference = embed_at(backbone, real_gaps, sr)
    report = {
        "bundle": str(args.bundle),
        "clips": len(chosen),
        "gap_seconds": args.gap,
        "kept_exactly": int(sum(exact)),
        "fad": {
            "inpainted_gap": fad(reference, embed_at(backbone, gaps, sr)),
            "copy_top1_same_span": fad(reference, embed_at(backbone, copies, sr)),
            "real_other_clips": fad(reference, embed_at(backbone, floor_gaps, sr)),
        },
        "seam_percentile_median": {m: float(np.median([s.percentile[m] for s in seams])) for m in MEASURES},
        "seam_percentile_p90": {m: float(np.percentile([s.percentile[m] for s in seams], 90)) for m in MEASURES},
        "seam_within_85th": float(np.mean([s.worst_percentile() <= 85 for s in seams])),
        "real_clip_same_points_percentile_median": {
            m: float(np.median([s.percentile[m] for s in seams_real])) for m in MEASURES
        },
    }
    edit_experiment.report(report, args.out)


if __name__ == "__main__":
    main()
