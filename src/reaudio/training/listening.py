"""What a listener hears, as numbers: clipping, loudness envelopes, prompt adherence, neighbours.

These complement FAD (a distribution distance) with per-clip checks, each of
which a bad model fails in a way one can hear: a clip at full scale, a texture
with no temporal shape, a clip that sounds like any other prompt's, a prompt
whose retrieved neighbours are the wrong kind of sound.
"""

from __future__ import annotations

import numpy as np

#: A sample this close to full scale counts as clipped.
FULL_SCALE = 0.999
#: A clip with more than this share of clipped samples counts as a clipped clip.
CLIPPED_SHARE = 0.001
#: Loudness envelopes use 50-ms frames; quieter than this (dBFS) is floored.
ENVELOPE_SECONDS = 0.05
ENVELOPE_FLOOR_DB = -80.0


def is_clipped(wav: np.ndarray) -> bool:
    """More than 0.1 % of the samples at full scale (the vocoder's tanh saturating)."""
    wav = np.asarray(wav)
    return bool(wav.size) and float(np.mean(np.abs(wav) >= FULL_SCALE)) > CLIPPED_SHARE


def loudness_envelope(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """RMS level of consecutive 50-ms frames, dBFS, floored at -80."""
    frame = max(1, int(ENVELOPE_SECONDS * sample_rate))
    n = len(wav) // frame
    if n == 0:
        return np.zeros(0)
    rms = np.sqrt(np.mean(np.square(np.asarray(wav[: n * frame], np.float64).reshape(n, frame)), axis=1))
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), ENVELOPE_FLOOR_DB)


def envelope_correlation(generated: np.ndarray, real: np.ndarray, sample_rate: int) -> float:
    """Pearson correlation of the two clips' loudness envelopes over their common length (0 if flat)."""
    a, b = loudness_envelope(generated, sample_rate), loudness_envelope(real, sample_rate)
    n = min(len(a), len(b))
    if n < 3 or np.std(a[:n]) == 0 or np.std(b[:n]) == 0:
        return 0.0
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


def paired_minus_unpaired(generated: np.ndarray, real: np.ndarray) -> float:
    """Mean cosine of each generated clip with its own prompt's real clip, minus the mean with the
    other prompts' real clips (0: the clips ignore their prompts)."""
    g = np.asarray(generated, np.float64)
    r = np.asarray(real, np.float64)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    r = r / np.linalg.norm(r, axis=1, keepdims=True)
    sim = g @ r.T
    n = len(sim)
    if n < 2:
        raise ValueError("need at least 2 pairs")
    paired = float(np.trace(sim)) / n
    unpaired = (float(sim.sum()) - float(np.trace(sim))) / (n * (n - 1))
    return paired - unpaired


def neighbour_label_scores(labels: list[str], neighbour_labels: list[list[str]], k: int) -> dict[str, float]:
    """Label precision@k (share of the first k neighbours with the query's label) and hit@k
    (share of queries with at least one), over queries that have a label."""
    scored = [(lab, nb[:k]) for lab, nb in zip(labels, neighbour_labels) if lab]
    if not scored or k < 1:
        return {}
    precision = np.mean([sum(n == lab for n in nb) / k for lab, nb in scored])
    hit = np.mean([any(n == lab for n in nb) for lab, nb in scored])
    return {f"precision@{k}": float(precision), f"hit@{k}": float(hit)}


def listener_metrics(
    generated: list[np.ndarray], real: list[np.ndarray], gen_emb: np.ndarray, real_emb: np.ndarray, sample_rate: int
) -> dict[str, float]:
    """Clipped-clip rate, median loudness, envelope correlation and paired-minus-unpaired similarity."""
    levels = [float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) for w in generated]
    return {
        "clipped_clips": float(np.mean([is_clipped(w) for w in generated])),
        "median_rms_dbfs": float(np.median([20 * np.log10(max(v, 1e-12)) for v in levels])),
        "envelope_correlation": float(
            np.mean([envelope_correlation(g, r, sample_rate) for g, r in zip(generated, real)])
        ),
        "paired_minus_unpaired": paired_minus_unpaired(gen_emb, real_emb),
    }
