"""How well does a trained LDM denoise, by noise level, and what do its samples look like?

    python benchmarks/experiments/diagnose_denoising.py SYSTEM DATABASE BUNDLE_MANIFEST [--clips 12] [--out diag.json]

SYSTEM is a `reaudio train ldm` final/ folder, DATABASE the retrieval database it was
trained with. On test clips (loudness-normalised as in training, -20 LUFS) it reports:
- per noise level t: the relative error of the clean latent the model implies
  (||x0_hat - z0|| / ||z0||) and, for an ε-model, the noise MSE: an ε-model's x0 error is
  its noise error divided by sqrt(alpha_bar), which is tiny at high t;
- per latent channel: the spread of encoded real latents beside that of latents sampled
  (25 DDIM steps, same captions and neighbours) at guidance 1.0 and 2.5.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.denoising.sampler import leading_timesteps
from reaudio.engine.retrieval.database import RetrievalDB
from reaudio.models.mel import LogMel
from reaudio.models.system import load_system
from reaudio.training.data import read_corpus
from reaudio.training.diffusion import Diffusion, ddim_step_reference
from reaudio.training.loudness import normalise_loudness

LEVELS = (20, 100, 300, 500, 700, 900, 990)


@torch.no_grad()
def diagnose(system: Path, database: Path, manifest: Path, clips: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    cfg, models = load_system([system])
    unet, clap, vae = models["unet"].eval(), models["clap"].eval(), models["vae"].eval()
    mel, sr = LogMel(cfg.mel), cfg.mel.sample_rate
    n = round(cfg.clip_seconds * sr)
    test = [c for c in read_corpus(manifest) if c.split == "test"]
    test = [test[round(i * len(test) / clips)] for i in range(min(clips, len(test)))]
    wavs = [normalise_loudness(load_audio(c.audio, sr)[:n], sr, -20.0) for c in test]
    wav = torch.from_numpy(np.stack([np.pad(w, (0, n - len(w))) for w in wavs])).float()
    z0 = vae.encode(mel(wav)).mean * cfg.vae.scaling_factor
    ids, mask = clap.tokenizer([c.caption for c in test])
    film = clap.embed_text(torch.from_numpy(ids), torch.from_numpy(mask))
    db = RetrievalDB(database)
    nb = db.gather(db.search(film.numpy(), cfg.retrieval.k))
    found = {
        "retrieved_text": (nb.caption_tokens, nb.caption_mask),
        "retrieved_audio": (nb.audio_tokens, nb.audio_mask),
    }
    contexts = {c.name: tuple(map(torch.from_numpy, found[c.name])) for c in cfg.unet.contexts}
    null = {k: (t, torch.zeros_like(m)) for k, (t, m) in contexts.items()}
    diffusion = Diffusion(cfg.schedule)
    acp = cfg.schedule.alphas_cumprod()
    by_level = []
    for t in LEVELS:
        tt = torch.full((len(z0),), t)
        noise = torch.randn_like(z0)
        zt = diffusion.q_sample(z0, tt, noise)
        out = unet(zt, tt, film, contexts)
        alpha, sigma = float(acp[t]) ** 0.5, float(1 - acp[t]) ** 0.5
        eps = diffusion.to_epsilon(zt, out, alpha, sigma)
        x0 = (zt - sigma * eps) / alpha
        by_level.append(
            {
                "t": t,
                "x0_relative_error": float((x0 - z0).norm() / z0.norm()),
                "noise_mse": float((eps - noise).pow(2).mean()),
            }
        )
    init = torch.from_numpy(np.random.default_rng(seed).standard_normal(tuple(z0.shape)).astype(np.float32))
    ratio = cfg.schedule.num_train_timesteps // 25
    sampled = {}
    for guidance in (1.0, 2.5):
        x = init.clone()
        for t in leading_timesteps(cfg.schedule, 25):
            tt = torch.full((len(x),), int(t))
            cond, uncond = unet(x, tt, film, contexts), unet(x, tt, torch.zeros_like(film), null)
            a_t = float(acp[t])
            eps = diffusion.to_epsilon(x, uncond + guidance * (cond - uncond), a_t**0.5, (1 - a_t) ** 0.5)
            x = ddim_step_reference(x, eps, a_t, float(acp[t - ratio] if t - ratio >= 0 else acp[0]))
        sampled[str(guidance)] = [round(float(s), 3) for s in x.std(dim=(0, 2, 3))]
    return {
        "prediction_type": cfg.schedule.prediction_type,
        "clips": len(test),
        "by_noise_level": by_level,
        "channel_std": {
            "encoded_real": [round(float(s), 3) for s in z0.std(dim=(0, 2, 3))],
            "sampled_at_guidance": sampled,
        },
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("system", type=Path)
    p.add_argument("database", type=Path)
    p.add_argument("manifest", type=Path)
    p.add_argument("--clips", type=int, default=12)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    report = json.dumps(diagnose(args.system, args.database, args.manifest, args.clips), indent=2)
    if args.out:
        args.out.write_text(report + "\n", encoding="utf-8")
    print(report)


if __name__ == "__main__":
    main()
