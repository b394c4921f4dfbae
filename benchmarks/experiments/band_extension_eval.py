"""What the band extension does to real clips: the vocoder round trip with and without it.

    python benchmarks/experiments/band_extension_eval.py MANIFEST --band-extension CKPT_OR_PACK
        [--bundle BUNDLE] [--mel-matching] [--limit 100] [--out F]

On ``--limit`` test clips of MANIFEST (evenly spread; the same selection as ``reaudio eval``), each
brought to the engine's start-clip level, and as many other test clips as the reference set:

- FAD (aisfx, which reads 44.1 kHz and 96 mel bands up to 22.05 kHz, so it sees the top band) of
  the clips as read (the floor), their 22.05-kHz copies, the universal HiFi-GAN's resynthesis of
  their log-mel, and that resynthesis through the band extension; with ``--bundle``, also the
  bundle's own encoder → decoder round trip (with its band extension, if it has one). Two reference
  sets: the other clips at full band (44.1 kHz) and, for continuity with earlier tables, at 22.05 kHz.
- The 11-16 kHz level relative to 0-8 kHz (median, over clips whose source has that band) of the
  real clips and of each resynthesis, and the log-spectral distance to the real clip in 8-16 kHz.

With ``--mel-matching``, also the vocoder's audio brought back to its log-mel
(``reaudio.models.mel_matching``, default settings), alone and then through the band extension.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.audio.frontend import log_mel
from reaudio.engine.audio.init_audio import training_level
from reaudio.models.configs import load_config
from reaudio.training.backbones import embed_at, load_backbone
from reaudio.training.band_measures import TOP_BAND, log_spectral_distance, relative_band_db, source_has_band
from reaudio.training.data import read_corpus
from reaudio.training.evaluate import evenly_spaced
from reaudio.training.metrics import fad

FULL = 44100
LSD_BAND = (8000.0, 16000.0)


def band_extension(source: Path):
    if (source / "pack.json").is_file():
        from reaudio.export.default_pack import pack_band_extension

        model = pack_band_extension(source)
        if model is None:
            raise SystemExit(f"{source}: this pack has no band extension")
        return model
    from reaudio.models.checkpoint import load_checkpoint

    return load_checkpoint(source).eval()


def pair(clip, mel_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(the clip at the mel's rate, at the engine's start level; its full-band copy at 44.1 kHz, same gain)."""
    low = load_audio(clip.audio, mel_rate)
    level = training_level(low, mel_rate)
    gain = float(np.abs(level).max() / max(np.abs(low).max(), 1e-12)) if low.size else 1.0
    full = load_audio(clip.fullband if clip.fullband is not None else clip.audio, FULL) * gain
    return level, full.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--band-extension", type=Path, required=True, help="checkpoint folder or pack")
    parser.add_argument("--config", type=Path, default=Path("src/reaudio/models/default_pack/family.json"))
    parser.add_argument("--bundle", type=Path, help="also the bundle's own encode → decode round trip")
    parser.add_argument("--mel-matching", action="store_true", help="also rows with the vocoder's audio mel-matched")
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from reaudio.models.pretrained import universal_hifigan

    mel_cfg = load_config(args.config).mel
    clips = [c for c in read_corpus(args.manifest) if c.split == "test"]
    test = evenly_spaced(clips, args.limit)
    chosen = {c.id for c in test}
    others = evenly_spaced([c for c in clips if c.id not in chosen], len(test))
    vocoder = universal_hifigan().eval()
    vocoder.remove_weight_norm()
    extend = band_extension(args.band_extension)

    rows: dict[str, list[np.ndarray]] = {"real": [], "real_22k": [], "vocoder": [], "vocoder_band_extended": []}
    matching = None
    if args.mel_matching:
        from reaudio.models.mel_matching import MelMatching

        matching = MelMatching(mel_cfg).eval()
        rows |= {"vocoder_mel_matched": [], "vocoder_mel_matched_band_extended": []}
    with torch.no_grad():
        for clip in test:
            low, full = pair(clip, mel_cfg.sample_rate)
            mel = torch.from_numpy(log_mel(low, mel_cfg))[None]
            voc = vocoder(mel)
            rows["real"].append(full)
            rows["real_22k"].append(low)
            rows["vocoder"].append(voc[0, : len(low)].numpy())
            rows["vocoder_band_extended"].append(extend(voc, mel)[0, : 2 * len(low)].numpy())
            if matching is not None:
                matched = matching(voc, mel)
                rows["vocoder_mel_matched"].append(matched[0, : len(low)].numpy())
                rows["vocoder_mel_matched_band_extended"].append(extend(matched, mel)[0, : 2 * len(low)].numpy())
    rates = {"real": FULL, "real_22k": mel_cfg.sample_rate, "vocoder": mel_cfg.sample_rate}
    rates["vocoder_band_extended"] = extend.cfg.out_rate
    rates["vocoder_mel_matched"], rates["vocoder_mel_matched_band_extended"] = mel_cfg.sample_rate, extend.cfg.out_rate
    if args.bundle:
        from reaudio.engine.pipeline import Engine

        engine = Engine.from_bundle(args.bundle, backend="cpu")
        rows["bundle_round_trip"], rates["bundle_round_trip"] = [], engine.sample_rate
        for low in rows["real_22k"]:
            wave = load_audio_at(low, mel_cfg.sample_rate, engine.sample_rate)
            frames = -(-len(wave) // engine.manifest.samples_per_frame)
            latent = engine.encode_latents([wave], frames)
            rows["bundle_round_trip"].append(engine.runners["decoder"].run({"latent": latent})[0][0, : len(wave)])

    backbone = load_backbone("aisfx")
    refs = [pair(c, mel_cfg.sample_rate) for c in others]
    reference_full = embed_at(backbone, [full for _, full in refs], FULL)
    reference_22k = embed_at(backbone, [low for low, _ in refs], mel_cfg.sample_rate)
    with_band = [source_has_band(w, FULL) for w in rows["real"]]
    report: dict = {"clips": len(test), "clips_with_top_band": int(sum(with_band)), "rows": {}}
    for name, waves in rows.items():
        rate = rates[name]
        emb = embed_at(backbone, waves, rate)
        up = [load_audio_at(w, rate, FULL) for w in waves]
        top = [relative_band_db(w, FULL, TOP_BAND) for w, h in zip(up, with_band) if h]
        lsd = [log_spectral_distance(r, w, FULL, LSD_BAND) for r, w, h in zip(rows["real"], up, with_band) if h]
        report["rows"][name] = {
            "rate": rate,
            "fad_vs_full_band": fad(reference_full, emb),
            "fad_vs_22k": fad(reference_22k, emb),
            "top_band_db_median": float(np.median(top)) if top else None,
            "lsd_8_16k_db": float(np.nanmedian(lsd)) if lsd else None,
        }
        print(name, json.dumps(report["rows"][name]), flush=True)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


def load_audio_at(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target:
        return wave
    import soxr

    return soxr.resample(wave, rate, target, quality="HQ").astype(np.float32)


if __name__ == "__main__":
    main()
