"""How well a bundle's vae_encoder stage brings real clips into its latent space.

    python benchmarks/experiments/vae_roundtrip.py BUNDLE BUNDLE_MANIFEST [--limit 100] [--vae CKPT] [--out F]

For test clips of BUNDLE_MANIFEST (evenly spread), each brought to the engine's start-clip level:
encode (bundle's vae_encoder) → decode (bundle's decoder: VAE decoder + vocoder) and report
the log-mel L1 and envelope correlation against the clip, the level change in dB, and the
per-channel spread of the encoded latents (to set beside those the denoiser samples: a start
clip off its manifold would show here). With --vae (the
torch VAE the encoder came from), also the relative error of the bundle's int8-packed
encoder against it, on the same mels. With --fad, the FAD (aisfx) of the same clips as read,
through the universal HiFi-GAN alone (log-mel → vocoder) and through the bundle's VAE and
vocoder, each against the same other test clips: how much of the distance between a
generated set and real audio the decoder alone accounts for. The "vocoder" row is the universal
HiFi-GAN unless --vocoder names another (a default-model pack, whose vocoder it is, or a vocoder
checkpoint folder). --vocoder-gains G [G …] adds a row per input level: the clip
G dB louder into the vocoder (or peak-normalised to 0.95, as HiFi-GAN's training data, for
"peak"), its output brought back by the same factor — does the vocoder render these clips
better at another level?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.audio.frontend import log_mel
from reaudio.engine.audio.init_audio import start_mels, training_level
from reaudio.engine.pipeline import Engine
from reaudio.training.data import read_corpus
from reaudio.training.listening import envelope_correlation


def _rms_db(wav: np.ndarray) -> float:
    return 20 * float(np.log10(np.sqrt(np.mean(np.square(wav, dtype=np.float64))) + 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--vae", type=Path, help="torch VAE checkpoint folder to compare the packed encoder with")
    parser.add_argument("--fad", action="store_true", help="also score the resynthesised clips with FAD")
    parser.add_argument("--vocoder", type=Path, help="with --fad: the log-mel row's vocoder (pack or checkpoint)")
    parser.add_argument(
        "--vocoder-gains",
        nargs="+",
        default=[],
        type=_gain,
        help="with --fad: vocoder rows at these input gains (dB, or peak)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    engine = Engine.from_bundle(args.bundle, backend="cpu")
    sr, mel_cfg = engine.sample_rate, engine.manifest.mel
    test = [c for c in read_corpus(args.manifest) if c.split == "test"]
    test = [test[round(i * len(test) / args.limit)] for i in range(min(args.limit, len(test)))]
    l1, env, level, latents, decoded = [], [], [], [], []
    for clip in test:
        wave = training_level(load_audio(clip.audio, sr), sr)
        frames = -(-len(wave) // engine.manifest.samples_per_frame)
        latent = engine.encode_latents([wave], frames)
        back = engine.runners["decoder"].run({"latent": latent})[0][0, : len(wave)]
        a, b = log_mel(wave, mel_cfg), log_mel(back, mel_cfg)
        n = min(len(a), len(b))
        l1.append(float(np.abs(a[:n] - b[:n]).mean()))
        env.append(envelope_correlation(back, wave, sr))
        level.append(_rms_db(back) - _rms_db(wave))
        latents.append(latent[0])
        decoded.append(back)
    real_std = np.concatenate([z.reshape(z.shape[0], -1) for z in latents], axis=1).std(axis=1)
    report = {
        "clips": len(test),
        "mel_l1": float(np.mean(l1)),
        "envelope_correlation": float(np.nanmean(env)),
        "level_change_db": {
            "median": float(np.median(level)),
            "p10": float(np.percentile(level, 10)),
            "p90": float(np.percentile(level, 90)),
        },
        "encoded_latent_std_per_channel": [round(float(s), 3) for s in real_std],
    }
    if args.vae:
        import torch

        from reaudio.models.checkpoint import load_checkpoint

        vae = load_checkpoint(args.vae).eval()
        errors = []
        for clip, z in zip(test[:24], latents):
            wave = training_level(load_audio(clip.audio, sr), sr)
            mel = start_mels(engine.manifest.mel, [wave], z.shape[1], engine.manifest.samples_per_frame)[0]
            with torch.no_grad():
                ref = (vae.encode(torch.from_numpy(mel[None])).mean * vae.cfg.scaling_factor)[0].numpy()
            errors.append(float(np.linalg.norm(z - ref) / np.linalg.norm(ref)))
        report["int8_vs_fp32_encoder_relative_error"] = {"median": float(np.median(errors)), "max": float(max(errors))}
    if args.fad:
        report["fad"] = _decoder_fad(args.manifest, test, decoded, sr, mel_cfg, args.vocoder, args.vocoder_gains)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")


def _gain(text: str) -> float | str:
    if text == "peak":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a gain in dB (e.g. -6 or 10) or peak") from None


def _input_gain_db(wave: np.ndarray, gain: float | str) -> float:
    """``gain`` in dB; "peak": what brings the clip's peak to 0.95 (HiFi-GAN's training level)."""
    return 20 * float(np.log10(0.95 / max(float(np.abs(wave).max()), 1e-6))) if gain == "peak" else float(gain)


def _vocoder(source: Path | None):
    """The universal HiFi-GAN, a pack's vocoder, or a vocoder checkpoint."""
    if source is None:
        from reaudio.models.pretrained import universal_hifigan

        return universal_hifigan()
    if (source / "pack.json").is_file():
        from reaudio.export.default_pack import pack_vocoder

        return pack_vocoder(source)
    from reaudio.models.checkpoint import load_checkpoint

    return load_checkpoint(source)


def _decoder_fad(
    manifest: Path,
    test: list,
    decoded: list[np.ndarray],
    sr: int,
    mel_cfg,
    vocoder_source: Path | None,
    gains: list[float | str] = (),
) -> dict:
    """FAD of the test clips as read, vocoded from their log-mel, and VAE-decoded (``decoded``),
    each against as many other test clips (the eval's real-vs-real floor set)."""
    import torch

    from reaudio.training.backbones import embed_at, load_backbone
    from reaudio.training.evaluate import evenly_spaced
    from reaudio.training.metrics import fad

    chosen = {c.id for c in test}
    others = evenly_spaced([c for c in read_corpus(manifest) if c.split == "test" and c.id not in chosen], len(test))
    vocoder = _vocoder(vocoder_source).eval()
    vocoder.remove_weight_norm()
    waves = [training_level(load_audio(c.audio, sr), sr) for c in test]

    @torch.no_grad()
    def vocode(wave: np.ndarray, gain_db: float = 0.0) -> np.ndarray:
        factor = 10 ** (gain_db / 20)
        return vocoder(torch.from_numpy(log_mel(wave * factor, mel_cfg))[None])[0, : len(wave)].numpy() / factor

    rows = [("as_read", waves), ("vocoder", [vocode(w) for w in waves]), ("vae_and_vocoder", decoded)]
    rows += [
        (f"vocoder_at_{g:g}_db" if g != "peak" else "vocoder_at_peak", [vocode(w, _input_gain_db(w, g)) for w in waves])
        for g in gains
    ]
    backbone = load_backbone("aisfx")
    reference = embed_at(backbone, [load_audio(c.audio, sr) for c in others], sr)
    return {name: fad(reference, embed_at(backbone, clips, sr)) for name, clips in rows} | {
        "reference_clips": len(others)
    }


if __name__ == "__main__":
    main()
