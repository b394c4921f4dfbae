"""What the editing experiments share (``inpaint_eval``, ``continuation_eval``, ``reference_eval``,
``timeline_eval``): their command line, the engine on the bundle, the corpus, the top-1 neighbour of
each prompt and the report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reaudio.engine.pipeline import Engine
from reaudio.training.data import read_corpus


def parser(doc: str) -> argparse.ArgumentParser:
    """MANIFEST, --bundle and --out; the caller adds its own options."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("manifest", type=Path)
    p.add_argument("--bundle", type=Path, help="default: the embedded default model")
    p.add_argument("--out", type=Path)
    return p


def open_engine(args: argparse.Namespace) -> tuple[Engine, list]:
    """The bundle (the default model when none is named) on the CPU, and the corpus's clips."""
    if args.bundle is None:
        from reaudio.engine.bundle.default_model import resolve_bundle

        args.bundle = resolve_bundle()
    engine = Engine.from_bundle(args.bundle, backend="cpu", audio_root=args.manifest.parent)
    return engine, read_corpus(args.manifest)


def top1_ids(engine: Engine, prompts: list[str]) -> list[str]:
    """The database item each prompt retrieves first (in the bundle's default mode)."""
    film, _, _ = engine.embed_text(prompts)
    rows = engine.db.search(film, 1, mode=engine.planner.default_retrieval)[:, 0]
    return [engine.db.items[int(r)]["id"] for r in rows]


def report(result: dict, out: Path | None) -> None:
    text = json.dumps(result, indent=2, default=lambda x: float(x) if isinstance(x, np.floating) else str(x))
    print(text)
    if out:
        out.write_text(text + "\n", encoding="utf-8")
