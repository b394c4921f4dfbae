"""Where are level and temporal structure lost? Measure each stage of a trained system on test clips.

    python scripts/diagnose_levels.py SYSTEM BUNDLE BUNDLE_MANIFEST [--limit 48] [--out diag.json]

SYSTEM is a `reaudio train ldm` final/ folder (VAE, vocoder, CLAP, UNet in torch), BUNDLE
a bundle of it (its denoiser samples the latents). Reported, each against the real clips:
- vocoder alone (real log-mel → waveform) and the VAE round trip (mel → encode → decode →
  vocoder): level error in dB, envelope correlation, log-mel L1, clipped clips;
- per-channel mean/std of the encoded real latents (× the scaling factor) beside those of
  latents the bundle's denoiser samples for the same captions (off-manifold samples show here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.pipeline import Engine, Request
from reaudio.models.mel import LogMel
from reaudio.models.system import load_system
from reaudio.training.data import read_corpus
from reaudio.training.listening import envelope_correlation, is_clipped


def _rms_db(wav: np.ndarray) -> float:
    return float(20 * np.log10(max(np.sqrt(np.mean(np.square(wav, dtype=np.float64))), 1e-12)))


def _stage(real: list[np.ndarray], out: list[np.ndarray], mel: LogMel, sr: int) -> dict:
    l1 = [
        float((mel(torch.from_numpy(o[: len(r)])) - mel(torch.from_numpy(r[: len(o)]))).abs().mean())
        for r, o in zip(real, out)
    ]
    return {
        "level_error_db": float(np.median([_rms_db(o) - _rms_db(r) for r, o in zip(real, out)])),
        "envelope_correlation": float(np.mean([envelope_correlation(o, r, sr) for r, o in zip(real, out)])),
        "mel_l1": float(np.mean(l1)),
        "clipped_clips": float(np.mean([is_clipped(o) for o in out])),
    }


@torch.no_grad()
def diagnose(system: Path, bundle: Path, manifest: Path, limit: int) -> dict:
    cfg, models = load_system([system])
    vae, vocoder = models["vae"].eval(), models["vocoder"].eval()
    mel = LogMel(cfg.mel)
    sr = cfg.mel.sample_rate
    test = [c for c in read_corpus(manifest) if c.split == "test"]
    test = [test[round(i * len(test) / limit)] for i in range(min(limit, len(test)))]
    real = [load_audio(c.audio, sr)[: round(cfg.clip_seconds * sr)] for c in test]
    voc, vae_rt, latents = [], [], []
    for wav in real:
        m = mel(torch.from_numpy(wav)[None])
        voc.append(vocoder(m)[0].numpy()[: len(wav)])
        z = vae.encode(m).mean
        latents.append((z * cfg.vae.scaling_factor)[0].flatten(1).numpy())  # (C, T·F)
        vae_rt.append(vocoder(vae.decode(z, m.shape[1:]))[0].numpy()[: len(wav)])
    report = {
        "clips": len(real),
        "vocoder": _stage(real, voc, mel, sr),
        "vae_round_trip": _stage(real, vae_rt, mel, sr),
    }
    encoded = np.concatenate(latents, axis=1)

    engine = Engine.from_bundle(bundle, backend="cpu")
    requests = [Request(c.caption, duration=len(w) / sr, seed=i) for i, (c, w) in enumerate(zip(test, real))]
    sampled = []
    for batch in engine.planner.batches(engine.planner.resolve_all(requests), 8):
        conditions, _, _ = engine._conditions(batch)
        sampled.append(engine._denoise(engine.denoiser, batch, conditions))  # (B, C, T, F)
    sampled_flat = np.concatenate([s.transpose(1, 0, 2, 3).reshape(s.shape[1], -1) for s in sampled], axis=1)
    report["latents"] = {
        "encoded_mean": encoded.mean(1).round(3).tolist(),
        "encoded_std": encoded.std(1).round(3).tolist(),
        "sampled_mean": sampled_flat.mean(1).round(3).tolist(),
        "sampled_std": sampled_flat.std(1).round(3).tolist(),
    }
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", type=Path)
    p.add_argument("bundle", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--limit", type=int, default=48)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    report = diagnose(args.system, args.bundle, args.manifest, args.limit)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
