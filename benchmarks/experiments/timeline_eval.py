"""Timeline prompts ("X, then Y"): does each part of the clip follow its own prompt?

    python benchmarks/experiments/timeline_eval.py MANIFEST [--bundle B] [--rows 30] [--out F]

``--rows`` pairs of test captions of different labels (evenly spread) make two-segment timelines
``0:X;H:Y`` of a clip of ``--seconds`` (H: half of it). Each half of the result is scored with the
bundle's CLAP (cosine of the half's audio embedding with each prompt's text embedding): a half
follows its prompt when it scores higher with its own prompt than with the other's. Beside it: one
prompt joining the two ("X, then Y"), the two prompts' top-1 retrieved clips placed one after the other
(copying), and the two real clips the captions came from (real).
"""

from __future__ import annotations

import edit_experiment
import numpy as np

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.pipeline import Engine, Request
from reaudio.training.evaluate import evenly_spaced


def _fit(wave: np.ndarray, n: int) -> np.ndarray:
    return np.pad(wave[:n], (0, max(0, n - len(wave))))


def _halves_score(engine: Engine, clips: list[np.ndarray], pairs: list[tuple[str, str]], half: int) -> dict:
    firsts = [c[:half] for c in clips]
    seconds = [c[half : 2 * half] for c in clips]
    audio_a, _ = engine.encode_audio(firsts)
    audio_b, _ = engine.encode_audio(seconds)
    text_x = engine.embed_each([x for x, _ in pairs])
    text_y = engine.embed_each([y for _, y in pairs])

    def cos(a, b):
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    first_ok = cos(audio_a, text_x) > cos(audio_a, text_y)
    second_ok = cos(audio_b, text_y) > cos(audio_b, text_x)
    return {
        "first_half_follows_its_prompt": round(float(first_ok.mean()), 3),
        "second_half_follows_its_prompt": round(float(second_ok.mean()), 3),
        "both_halves": round(float((first_ok & second_ok).mean()), 3),
        "margin": round(
            float(
                np.mean(cos(audio_a, text_x) - cos(audio_a, text_y) + cos(audio_b, text_y) - cos(audio_b, text_x)) / 2
            ),
            4,
        ),
    }


def main() -> None:
    parser = edit_experiment.parser(__doc__)
    parser.add_argument("--rows", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    engine, clips = edit_experiment.open_engine(args)
    sr = engine.sample_rate
    by_id = {c.id: c for c in clips}
    seen, distinct = set(), []
    for clip in clips:
        if clip.split == "test" and clip.label not in seen:
            seen.add(clip.label)
            distinct.append(clip)
    chosen = evenly_spaced(distinct, 2 * args.rows)
    pairs = [(chosen[2 * i], chosen[2 * i + 1]) for i in range(len(chosen) // 2)]
    captions = [(a.caption, b.caption) for a, b in pairs]
    half = round(args.seconds * sr / 2)
    at = args.seconds / 2
    timed, joined, copied, real = [], [], [], []
    top_x = edit_experiment.top1_ids(engine, [x for x, _ in captions])
    top_y = edit_experiment.top1_ids(engine, [y for _, y in captions])
    for i, ((a, b), (x, y)) in enumerate(zip(pairs, captions)):
        common = dict(seed=i, duration=args.seconds)
        timed.append(engine.generate([Request(f"{x}, then {y}", timeline=f"0:{x};{at:g}:{y}", **common)])[0].waveform)
        joined.append(engine.generate([Request(f"{x}, then {y}", window=args.seconds / 2, **common)])[0].waveform)
        neighbour = [load_audio(by_id[n].audio, sr) for n in (top_x[i], top_y[i])]
        copied.append(np.concatenate([_fit(neighbour[0], half), _fit(neighbour[1], half)]))
        real.append(np.concatenate([_fit(load_audio(by_id[c.id].audio, sr), half) for c in (a, b)]))
        print(f"{i + 1}/{len(pairs)} {x!r} → {y!r}", flush=True)
    report = {
        "bundle": str(args.bundle),
        "rows": len(pairs),
        "seconds": args.seconds,
        "timeline": _halves_score(engine, timed, captions, half),
        "one_prompt_x_then_y": _halves_score(engine, joined, captions, half),
        "copy_top1_of_each_prompt": _halves_score(engine, copied, captions, half),
        "real_clips_of_each_caption": _halves_score(engine, real, captions, half),
    }
    edit_experiment.report(report, args.out)


if __name__ == "__main__":
    main()
