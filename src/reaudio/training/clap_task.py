"""CLAP training: frozen pretrained text tower, trainable audio tower and projections (InfoNCE).

Evaluation reports text→audio and audio→text recall@1/@10 on the test split,
beside a simple baseline: mean log-mel features of the audio, and a ridge
regression from the frozen text tower's mean-pooled features to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from reaudio.models.clap import CLAP

from .tasks import Task


def recall_at(similarity: np.ndarray, ks: tuple[int, ...] = (1, 10)) -> dict[str, float]:
    """Recall@k of the diagonal: row i's match is column i."""
    ranks = (similarity > np.diag(similarity)[:, None]).sum(axis=1)  # items scored above the true one
    return {f"r@{k}": float(np.mean(ranks < k)) for k in ks}


class CLAPTask(Task):
    deliverables = ("clap",)

    def __init__(self, family, manifest, init: str | Path | None = None) -> None:
        super().__init__(family, manifest)
        self.init = init

    def setup(self, trainer) -> None:
        super().setup(trainer)
        if self.init:
            from reaudio.models.checkpoint import load_checkpoint

            self.clap = load_checkpoint(self.init)
        else:
            self.clap = CLAP(self.family.clap)
        self.captions = [c.caption for c in self.train.clips]

    def trainable(self) -> dict[str, nn.Module]:
        return {"clap": self.clap}

    def train_step(self, trainer, step: int) -> dict[str, float]:
        idx, wav = self.batch_audio(self.train, trainer, step)
        ids, mask = self.clap.tokenizer([self.captions[i] for i in idx])
        model = trainer.ddp["clap"]
        module = model.module if hasattr(model, "module") else model
        text = module.embed_text(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
        audio = module.embed_audio(self.mel(wav))
        # Repeated captions in a batch are true positives too; InfoNCE with the
        # diagonal as target is the usual approximation (Elizalde et al., 2023).
        loss = module.contrastive_loss(text, audio)
        trainer.optimise("clap", loss)
        return {"loss": loss.item(), "temperature": float(1.0 / module.logit_scale.detach().exp())}

    @torch.no_grad()
    def evaluate(self, trainer) -> dict:
        if self.test is None or len(self.test) < 2:
            return {}
        clap = trainer.final_modules()["clap"].to(self.device).eval()
        audio, text, mel_mean, text_feat = [], [], [], []
        for idx, wav in self.test_batches():
            mel = self.mel(wav)
            audio.append(clap.embed_audio(mel).cpu().numpy())
            mel_mean.append(mel.mean(dim=1).cpu().numpy())
            caps = [self.test.clips[i].caption for i in idx]
            ids, mask = clap.tokenizer(caps)
            ids_t, mask_t = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
            text.append(clap.embed_text(ids_t, mask_t).cpu().numpy())
            tokens = clap.text_tokens(ids_t, mask_t)
            w = mask_t.unsqueeze(-1).float()
            text_feat.append(((tokens * w).sum(1) / w.sum(1)).cpu().numpy())
        a, t = np.concatenate(audio), np.concatenate(text)
        sim = t @ a.T
        result = {f"text_to_audio_{k}": v for k, v in recall_at(sim).items()}
        result |= {f"audio_to_text_{k}": v for k, v in recall_at(sim.T).items()}
        result |= {
            f"baseline_{k}": v
            for k, v in self._baseline(clap, np.concatenate(text_feat), np.concatenate(mel_mean)).items()
        }
        result["test_clips"] = len(a)
        return result

    @torch.no_grad()
    def _baseline(self, clap, test_text: np.ndarray, test_mel: np.ndarray) -> dict[str, float]:
        """Ridge regression text features → mean log-mel on train; cosine retrieval on test."""
        feats, mels = [], []
        rng = np.random.default_rng(0)
        for start in range(0, len(self.train), 16):
            idx = range(start, min(start + 16, len(self.train)))
            wav = torch.from_numpy(np.stack([self.train.segment(i, rng) for i in idx])).to(self.device)
            mels.append(self.mel(wav).mean(dim=1).cpu().numpy())
            ids, mask = clap.tokenizer([self.captions[i] for i in idx])
            ids_t, mask_t = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
            w = mask_t.unsqueeze(-1).float()
            feats.append(((clap.text_tokens(ids_t, mask_t) * w).sum(1) / w.sum(1)).cpu().numpy())
        x, y = np.concatenate(feats), np.concatenate(mels)
        y_mean = y.mean(0)
        xb = np.hstack([x, np.ones((len(x), 1))])
        coef = np.linalg.solve(xb.T @ xb + 1.0 * np.eye(xb.shape[1]), xb.T @ (y - y_mean))
        pred = np.hstack([test_text, np.ones((len(test_text), 1))]) @ coef
        target = test_mel - y_mean

        def unit(v):
            return v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-9)

        sim = unit(pred) @ unit(target).T
        return {f"text_to_audio_{k}": v for k, v in recall_at(sim).items()} | {
            f"audio_to_text_{k}": v for k, v in recall_at(sim.T).items()
        }
