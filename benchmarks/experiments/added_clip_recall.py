"""Do clips a user adds with `reaudio db add` come back when prompted with their own captions?

    python benchmarks/experiments/added_clip_recall.py BUNDLE BUNDLE_MANIFEST [--split heldout] [--limit 120]

Copies BUNDLE to a temporary folder, adds the split's clips (audio + caption) with the
bundle's own encoders, then prompts with each added caption and reports, per retrieval
mode, the share of prompts whose top-1 / top-3 neighbours include an added clip with that
caption (captions repeat across clips of one label: any of them counts as "theirs").
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from reaudio.engine.jobs.db_commands import ClipSpec, add_clips
from reaudio.engine.pipeline import Engine
from reaudio.training.data import read_corpus


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--split", default="heldout")
    p.add_argument("--limit", type=int, default=120)
    p.add_argument("--hybrid-weights", type=float, nargs="+", help="audio weights of hybrid search to try")
    args = p.parse_args()
    clips = [c for c in read_corpus(args.manifest) if c.split == args.split][: args.limit]
    with tempfile.TemporaryDirectory(prefix="reaudio-added-") as tmp:
        bundle = Path(tmp) / "bundle"
        shutil.copytree(args.bundle, bundle)
        add_clips(
            bundle, [ClipSpec(c.audio, c.caption, f"mine-{i}", c.label, f"clip {i}") for i, c in enumerate(clips)]
        )
        engine = Engine.from_bundle(bundle, backend="cpu")
        caption_of = {item["id"]: item["caption"] for item in engine.db.items}
        emb, _, _ = engine.embed_text([c.caption for c in clips])
        report = {"added": len(clips), "database": len(engine.db)}
        runs = [(m, None) for m in engine.db.info.modes if m != "hybrid"]
        runs += [("hybrid", w) for w in (args.hybrid_weights or [engine.db.info.hybrid_weight])]
        for mode, weight in runs:
            if weight is not None:
                engine.db.info = replace(engine.db.info, hybrid_weight=weight)
            ids = engine.db.item_ids(engine.db.search(emb, 3, mode=mode))
            theirs = [[i.startswith("mine-") and caption_of[i] == c.caption for i in row] for c, row in zip(clips, ids)]
            name = mode if weight is None else f"hybrid (audio weight {weight})"
            report[name] = {
                "top1": sum(t[0] for t in theirs) / len(clips),
                "top3": sum(any(t) for t in theirs) / len(clips),
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
