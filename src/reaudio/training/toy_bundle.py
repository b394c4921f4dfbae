"""Regenerate the toy artefacts the tests run against: a random `tiny` system and its bundle.

    python -m reaudio.training.toy_bundle OUT_DIR [--fp16] [--empty]

writes OUT_DIR/system (checkpoints), OUT_DIR/db (a retrieval database of
synthetic sounds), OUT_DIR/bundle and OUT_DIR/bundle-fullband (the same models with an untrained
band extension in the decoder: twice the mel's rate out); with --empty also OUT_DIR/bundle-empty (the
same models, no database: what the runtime-only tests use where the others export
one). Seeded: the same command gives the same weights.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from reaudio.export.bundle import export_bundle
from reaudio.models.band_extension import BandExtension
from reaudio.models.configs import load_config
from reaudio.models.mel import LogMel
from reaudio.models.system import build_system, load_system, save_system
from reaudio.training.band_extension_task import band_extension_config
from reaudio.training.database import AudioItem, build_database

SOUNDS = {
    "beep": "a short high beep",
    "hum": "a low electrical hum",
    "noise": "a burst of white noise",
    "chirp": "a rising chirp",
    "click": "rapid clicking",
    "pulse": "a slow pulsing tone",
}


def synthetic_sound(kind: str, sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    if kind == "beep":
        x = np.sin(2 * np.pi * 2000 * t) * (t < seconds / 3)
    elif kind == "hum":
        x = 0.6 * np.sin(2 * np.pi * 60 * t) + 0.3 * np.sin(2 * np.pi * 120 * t)
    elif kind == "noise":
        x = rng.normal(0, 0.5, t.shape) * np.exp(-4 * t)
    elif kind == "chirp":
        x = np.sin(2 * np.pi * (200 * t + 1500 * t**2))
    elif kind == "click":
        x = ((t * 20) % 1 < 0.02) * rng.normal(0, 0.8, t.shape)
    else:
        x = np.sin(2 * np.pi * 440 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
    return (0.5 * x).astype(np.float32)


def synthetic_items(cfg, per_kind: int = 3, seed: int = 0) -> list[AudioItem]:
    rng = np.random.default_rng(seed)
    items = []
    for kind, caption in SOUNDS.items():
        for i in range(per_kind):
            seconds = cfg.clip_seconds * (0.6 + 0.2 * i)
            audio = synthetic_sound(kind, cfg.mel.sample_rate, seconds, rng)
            items.append(AudioItem(f"{kind}-{i}", audio, caption, label=kind, source=f"synthetic/{kind}.wav"))
    return items


def make(out: Path, fp16: bool = False, seed: int = 0, empty: bool = False) -> Path:
    for old in ("system", "db"):  # regenerate from scratch
        shutil.rmtree(out / old, ignore_errors=True)
    torch.manual_seed(seed)
    cfg = load_config("tiny")
    models = build_system(cfg)
    save_system(out / "system", cfg, models)
    build_database(
        out / "db", models["clap"], LogMel(cfg.mel), cfg.retrieval, synthetic_items(cfg), {"source": "synthetic"}
    )
    export_bundle(cfg, models, out / "bundle", fp16=fp16, database=out / "db", overwrite=True)
    # Exporting changes the modules (weight norm folded): each further bundle loads them again.
    _, fresh = load_system([out / "system"])
    extension = BandExtension(band_extension_config(cfg)).eval()
    fresh["band_extension"] = extension
    export_bundle(cfg, fresh, out / "bundle-fullband", database=out / "db", overwrite=True)
    if empty:
        _, fresh = load_system([out / "system"])
        export_bundle(cfg, fresh, out / "bundle-empty", overwrite=True)
    return out / "bundle"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--empty", action="store_true", help="also a bundle without a database")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    print(make(args.out, args.fp16, empty=args.empty))


if __name__ == "__main__":
    main()
