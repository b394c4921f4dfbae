"""A plain torch text-to-audio pipeline: the reference the exported engine is checked against."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reaudio.engine.denoising.sampler import leading_timesteps
from reaudio.engine.retrieval.database import RetrievalDB
from reaudio.models.configs import FamilyConfig

from .diffusion import Diffusion, ddim_step_reference


class TorchPipeline:
    """Prompt → CLAP → retrieval → DDIM with guidance → VAE decoder → vocoder, in torch (fp32)."""

    def __init__(self, cfg: FamilyConfig, models: dict[str, nn.Module], db: RetrievalDB | None = None) -> None:
        self.cfg = cfg
        self.models = {k: m.eval() for k, m in models.items()}
        self.db = db
        self.diffusion = Diffusion(cfg.schedule)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        initial_latents: np.ndarray,
        steps: int,
        guidance: float,
        k: int,
        guidance_rescale: float = 0.0,
    ) -> np.ndarray:
        cfg, clap, unet = self.cfg, self.models["clap"], self.models["unet"]
        ids, mask = clap.tokenizer(prompts)
        film = clap.embed_text(torch.from_numpy(ids), torch.from_numpy(mask))
        contexts = {}
        if cfg.unet.contexts:
            rows = self.db.search(film.numpy(), max(k, 1))
            rows[:, k:] = -1
            nb = self.db.gather(rows)
            found = {
                "retrieved_text": (nb.caption_tokens, nb.caption_mask),
                "retrieved_audio": (nb.audio_tokens, nb.audio_mask),
            }
            contexts = {c.name: tuple(map(torch.from_numpy, found[c.name])) for c in cfg.unet.contexts}
        null = {name: (t, torch.zeros_like(m)) for name, (t, m) in contexts.items()}
        acp = cfg.schedule.alphas_cumprod()
        ratio = cfg.schedule.num_train_timesteps // steps
        x = torch.from_numpy(initial_latents).float()
        for t in leading_timesteps(cfg.schedule, steps):
            tt = torch.full((len(x),), int(t))
            eps_c = unet(x, tt, film, contexts)
            eps_u = unet(x, tt, torch.zeros_like(film), null)
            out = eps_u + guidance * (eps_c - eps_u)
            if guidance_rescale:  # Lin et al. 2024, eq. 15-16: toward the conditional prediction's std
                dims = tuple(range(1, out.dim()))
                rescaled = out * eps_c.std(dim=dims, keepdim=True) / out.std(dim=dims, keepdim=True)
                out = guidance_rescale * rescaled + (1 - guidance_rescale) * out
            eps = self.diffusion.to_epsilon(x, out, float(acp[t]) ** 0.5, float(1 - acp[t]) ** 0.5)
            a_prev = acp[t - ratio] if t - ratio >= 0 else acp[0]
            x = ddim_step_reference(x, eps, float(acp[t]), float(a_prev))
        mel = self.models["vae"].decode(x / cfg.vae.scaling_factor)[..., : cfg.mel.n_mels]
        return self.models["vocoder"](mel).numpy()
