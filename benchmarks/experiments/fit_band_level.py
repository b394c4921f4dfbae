"""Fit the band extension's overall level on training clips, through the bundle's own decoder.

    python benchmarks/experiments/fit_band_level.py MANIFEST --bundle BUNDLE --out CKPT
        [--pack src/reaudio/models/default_pack] [--clips 200]

The band extension predicts each top band's level from the log-mel; the decoder's mels are smoother
than real ones and it reads them low. On ``--clips`` training clips whose source has the 11-16 kHz
band (evenly spread), each clip is encoded and decoded by BUNDLE (the pack's assembled bundle, so
the whole decoder chain as shipped), and the offset is the median over clips of (the real clip's
11-16 kHz level relative to 0-8 kHz − the decoded clip's). The pack's band extension, with that
offset added to its envelope network's output (ln units), is written to CKPT as a checkpoint that
``reaudio default-model add-band-extension CKPT`` takes. Test clips are never read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from band_extension_eval import FULL, load_audio_at, pair  # noqa: E402

from reaudio.engine.pipeline import Engine  # noqa: E402
from reaudio.export.default_pack import pack_band_extension  # noqa: E402
from reaudio.models.checkpoint import save_checkpoint  # noqa: E402
from reaudio.training.band_measures import TOP_BAND, relative_band_db, source_has_band  # noqa: E402
from reaudio.training.data import read_corpus  # noqa: E402
from reaudio.training.evaluate import evenly_spaced  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--bundle", type=Path, required=True, help="the pack's assembled bundle")
    parser.add_argument("--pack", type=Path, default=Path("src/reaudio/models/default_pack"))
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    args = parser.parse_args()

    engine = Engine.from_bundle(args.bundle, backend="cpu", precision="fp32")
    if engine.sample_rate != FULL:
        raise SystemExit(f"{args.bundle}: writes {engine.sample_rate} Hz; this fits a 44.1-kHz band extension")
    mel_rate = engine.manifest.mel.sample_rate
    train = [c for c in read_corpus(args.manifest) if c.split == "train" and c.fullband is not None]
    pairs = []
    for clip in evenly_spaced(train, 3 * args.clips):  # more than needed: some have no top band
        low, full = pair(clip, mel_rate)
        if source_has_band(full, FULL) and len(low) >= mel_rate // 2:
            pairs.append((clip.id, low, full))
        if len(pairs) == args.clips:
            break
    differences = []
    for _, low, full in pairs:
        wave = load_audio_at(low, mel_rate, engine.sample_rate)
        frames = -(-len(wave) // engine.manifest.samples_per_frame)
        decoded = engine.runners["decoder"].run({"latent": engine.encode_latents([wave], frames)})[0][0, : len(wave)]
        differences.append(relative_band_db(full, FULL, TOP_BAND) - relative_band_db(decoded, FULL, TOP_BAND))
    offset_db = float(np.median(differences))

    model = pack_band_extension(args.pack)
    if model is None:
        raise SystemExit(f"{args.pack}: this pack has no band extension")
    with torch.no_grad():
        model.envelope.out.bias += offset_db * math.log(10.0) / 20.0  # levels are ln of magnitudes
    save_checkpoint(args.out, model)
    report = {
        "clips": len(pairs),
        "offset_db": offset_db,
        "difference_db_quartiles": [float(q) for q in np.percentile(differences, [25, 50, 75])],
        "band_hz": list(TOP_BAND),
        "bundle": args.bundle.name,
    }
    (args.out / "band_level_fit.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
