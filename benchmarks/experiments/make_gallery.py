"""Mel-spectrogram gallery: generated clips next to their nearest real clips.

    python benchmarks/experiments/make_gallery.py BUNDLE CORPUS/manifest.jsonl OUT [--prompts P ...] [--steps N]

For each prompt the bundle generates one clip; the clip's CLAP audio embedding
(the bundle's own audio encoder) finds the nearest clip of the bundle's
database, whose audio is read from the corpus. Writes one PNG per prompt and
``gallery.md`` with the prompt, the retrieved neighbours and the nearest clip.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.audio.frontend import log_mel
from reaudio.engine.jobs.prompts import slugify
from reaudio.engine.pipeline import Engine, Request

PROMPTS = [
    "footsteps crunch on gravel",
    "swords clash and clang",
    "an explosion",
    "rain falls steadily",
    "a horse snorts and shuffles",
    "a snare drum hit",
    "a laser gun fires",
    "a campfire crackles",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("manifest", type=Path, help="the corpus manifest (to find the real clips' audio)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--prompts", nargs="+", default=PROMPTS)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    engine = Engine.from_bundle(args.bundle, backend="cpu")
    corpus = {}
    for line in args.manifest.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        corpus[row["id"]] = args.manifest.parent / row["audio"]
    args.out.mkdir(parents=True, exist_ok=True)
    results = engine.generate([Request(p, seed=args.seed, steps=args.steps) for p in args.prompts])
    embeddings, _ = engine.encode_audio([r.waveform for r in results])
    nearest_rows = engine.db.search(embeddings, 1)[:, 0]
    lines = [
        "| prompt | generated (left) vs nearest real clip (right) | nearest clip | retrieved neighbours |",
        "| --- | --- | --- | --- |",
    ]
    mel_cfg = engine.manifest.mel
    for prompt, result, row in zip(args.prompts, results, nearest_rows):
        item = engine.db.items[int(row)]
        real = load_audio(corpus[item["id"]], engine.sample_rate)[: len(result.waveform)]
        fig, axes = plt.subplots(1, 2, figsize=(7.5, 2.4), sharey=True)
        for ax, wav, title in ((axes[0], result.waveform, "generated"), (axes[1], real, "nearest real clip")):
            mel = log_mel(wav.astype(np.float32), mel_cfg)
            ax.imshow(mel.T, origin="lower", aspect="auto", cmap="magma", vmin=-11.5, vmax=2)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(prompt, fontsize=10)
        fig.tight_layout()
        name = f"{slugify(prompt, 48)}.png"
        fig.savefig(args.out / name, dpi=72)
        plt.close(fig)
        neighbours = "; ".join(n.get("caption", n.get("id", "")) for n in result.neighbours)
        lines.append(f"| {prompt} | ![{prompt}]({name}) | {item['caption']} (`{item['id']}`) | {neighbours} |")
    (args.out / "gallery.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(args.prompts)} spectrogram pairs in {args.out}")


if __name__ == "__main__":
    main()
