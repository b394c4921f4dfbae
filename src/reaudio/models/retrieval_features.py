"""Features of retrieved (caption, audio) pairs that the UNet cross-attends to."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .clap import CLAP

# "text": legacy databases whose only keys are caption embeddings (the same matching as "caption").
_KEYS = ("caption", "audio", "hybrid", "text")
_CONTEXTS = ("retrieved_text", "retrieved_audio")


@dataclass(frozen=True)
class RetrievalConfig:
    """How neighbours are found and what the denoiser sees of them.

    Attributes:
        k: neighbours retrieved per prompt (0: no retrieval).
        key: how the prompt's CLAP text embedding is matched, in training and by default at
            generation: against the database's "caption" embeddings, its CLAP "audio"
            embeddings, or a "hybrid" weighted sum of both scores (databases keep both keys;
            "text" builds a legacy database with caption keys only).
        contexts: which neighbour features condition the UNet: any of
            "retrieved_text" (caption tokens) and "retrieved_audio" (audio tokens).
        hybrid_weight: weight of the audio score in "hybrid" matching (the caption score gets 1 − it).
        caption_tokens: L, token features kept per retrieved caption (paper: 50).
        audio_tokens: M, pooled audio tokens per retrieved clip (paper: 32).
    """

    k: int = 3
    key: str = "audio"
    contexts: tuple[str, ...] = _CONTEXTS
    hybrid_weight: float = 0.5
    caption_tokens: int = 50
    audio_tokens: int = 32

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"RetrievalConfig.k={self.k} must be >= 0")
        if self.key not in _KEYS:
            raise ValueError(f"RetrievalConfig.key={self.key!r}; valid: {', '.join(_KEYS)}")
        bad = sorted(set(self.contexts) - set(_CONTEXTS))
        if bad:
            raise ValueError(f"RetrievalConfig.contexts: unknown {bad}; valid: {', '.join(_CONTEXTS)}")
        if not 0.0 <= self.hybrid_weight <= 1.0:
            raise ValueError(f"RetrievalConfig.hybrid_weight={self.hybrid_weight} must be in [0, 1]")
        if self.caption_tokens < 1 or self.audio_tokens < 1:
            raise ValueError("RetrievalConfig: caption_tokens and audio_tokens must be >= 1")


def database_key_settings(cfg: RetrievalConfig) -> dict:
    """The ``DatabaseInfo`` fields that follow from ``cfg.key``: which keys a new database keeps."""
    if cfg.key == "text":
        return {"key": "text", "caption_keys": False, "index_mode": ""}
    return {"key": "audio", "caption_keys": True, "index_mode": cfg.key, "hybrid_weight": cfg.hybrid_weight}


class RetrievalFeatureEncoder:
    """Caption token features (fixed L, with mask) and pooled audio tokens (M) from a CLAP."""

    def __init__(self, clap: CLAP, cfg: RetrievalConfig) -> None:
        self.clap = clap
        self.cfg = cfg

    @torch.no_grad()
    def caption_features(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → tokens (N, L, hidden) and mask (N, L) bool; padding rows are zero."""
        ids, mask = self.clap.tokenizer(captions, length=self.cfg.caption_tokens)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        device = next(self.clap.parameters()).device
        tokens = self.clap.text_tokens(ids_t.to(device), mask_t.to(device))
        mask_b = mask_t.to(device).bool()
        return tokens * mask_b.unsqueeze(-1), mask_b

    @torch.no_grad()
    def audio_features(self, mel: torch.Tensor) -> torch.Tensor:
        """Log-mel (N, T, n_mels) → pooled audio tokens (N, M, width)."""
        return self.clap.audio_tokens(mel, self.cfg.audio_tokens)
