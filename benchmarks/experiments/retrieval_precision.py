"""Label precision@k and hit@k of a database's neighbours for a manifest split's captions, per
retrieval mode (and hybrid weight), with the torch CLAP that built the database.

    python benchmarks/experiments/retrieval_precision.py DB CLAP CLIPS [--split test] [--k 3] [--weights W ...]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from reaudio.engine.retrieval.database import RetrievalDB
from reaudio.models.checkpoint import load_checkpoint
from reaudio.training.data import read_corpus
from reaudio.training.listening import neighbour_label_scores


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("db", type=Path)
    p.add_argument("clap", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--split", default="test")
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--weights", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="hybrid audio weights")
    args = p.parse_args()
    db = RetrievalDB(args.db)
    clap = load_checkpoint(args.clap).eval()
    clips = [c for c in read_corpus(args.manifest) if c.split == args.split]
    with torch.no_grad():
        ids, mask = clap.tokenizer([c.caption for c in clips])
        queries = clap.embed_text(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    labels = [c.label for c in clips]
    rows = {}
    for mode in db.info.modes:
        for w in args.weights if mode == "hybrid" else [None]:
            if w is not None:
                db.info = replace(db.info, hybrid_weight=w)
            found = db.search(queries, args.k, mode=mode)
            names = [[db.items[r].get("label", "") for r in row if r >= 0] for row in found]
            key = mode if w is None else f"hybrid (audio weight {w})"
            rows[key] = neighbour_label_scores(labels, names, 1) | neighbour_label_scores(labels, names, args.k)
    print(json.dumps({"split": args.split, "queries": len(clips), **rows}, indent=2))


if __name__ == "__main__":
    main()
