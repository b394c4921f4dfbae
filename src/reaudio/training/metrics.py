"""Generation metrics: Fréchet distance, paired KL, Inception Score, CLAP score.

Definitions follow AudioLDM's evaluation (Liu et al., 2023): FAD is the Fréchet
distance between Gaussians fitted to embeddings of real and generated clips; KL
is computed per test caption between a classifier's label distributions for the
real and the generated clip; IS is exp(E_x KL(p(y|x) || p(y))) over the
generated set.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


def gaussian_stats(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of (N, D) embeddings (N ≥ 2)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 embeddings of shape (N, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) (Dowson & Landau, 1982)."""
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    with warnings.catch_warnings():
        # Few samples give singular covariances; handled just below.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        # A singular product: regularise, as is customary for small sample counts.
        eps = np.eye(len(sigma1)) * 1e-6
        covmean = linalg.sqrtm((sigma1 + eps) @ (sigma2 + eps))
    covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fad(real: np.ndarray, generated: np.ndarray) -> float:
    """Fréchet distance between embedding sets (N, D) and (M, D)."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(generated))


def kl_paired(p_real: np.ndarray, p_generated: np.ndarray, eps: float = 1e-8) -> float:
    """Mean over pairs of KL(p_real ‖ p_generated); rows are label distributions."""
    p = np.clip(np.asarray(p_real, dtype=np.float64), eps, 1.0)
    q = np.clip(np.asarray(p_generated, dtype=np.float64), eps, 1.0)
    return float(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))


def inception_score(probs: np.ndarray, eps: float = 1e-12) -> float:
    """exp(E_x KL(p(y|x) ‖ p(y))) over (N, classes) label distributions."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1.0)
    marginal = p.mean(axis=0, keepdims=True)
    return float(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(marginal)), axis=1))))


def clap_score(audio_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """Mean cosine similarity between paired (N, E) audio and text embeddings."""
    a = np.asarray(audio_embeddings, dtype=np.float64)
    t = np.asarray(text_embeddings, dtype=np.float64)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    return float(np.mean(np.sum(a * t, axis=1)))


FREQUENCY_BUCKETS = ((0, 0, "0 (unseen)"), (1, 1, "1"), (2, 10, "2–10"), (11, 100, "11–100"), (101, None, ">100"))


def frequency_bucket(count: int) -> str:
    """The long-tail bucket of a label seen ``count`` times in training."""
    for lo, hi, name in FREQUENCY_BUCKETS:
        if count >= lo and (hi is None or count <= hi):
            return name
    raise ValueError(count)
