"""An inverted-file index over unit-norm keys (IVF-Flat): k-means lists, exact scores inside the probed lists.

For keys that form clusters — CLAP embeddings of sound libraries do — a query's
neighbours sit in the few lists whose centroids are nearest, and scoring those
lists exactly with one matrix product per list is cheaper on a CPU than walking
an HNSW graph whose beam must grow with the database to keep recall. Files in
a database generation::

    ivf_centroids.npy  (L, E) float32 unit centroids
    ivf_order.npy      (N,) int64 rows grouped by list
    ivf_offsets.npy    (L + 1,) int64 where each list starts in ivf_order
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILES = ("ivf_centroids", "ivf_order", "ivf_offsets")


def default_lists(count: int) -> int:
    """About 2·√N lists (2 000 at a million keys): on clustered keys more, smaller lists follow the
    clusters better (recall) and let a query touch less memory (speed); see benchmarks/RESULTS.md."""
    return max(1, round(2 * count**0.5))


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def assign(keys: np.ndarray, centroids: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """The nearest centroid (cosine) of every key, in chunks so the score matrix stays small."""
    out = np.empty(len(keys), np.int64)
    for start in range(0, len(keys), chunk):
        block = np.asarray(keys[start : start + chunk], dtype=np.float32)
        out[start : start + len(block)] = np.argmax(block @ centroids.T, axis=1)
    return out


def train_centroids(keys: np.ndarray, lists: int, iterations: int = 10, seed: int = 0) -> np.ndarray:
    """Spherical k-means on a sample of at most 64 keys per list (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    n = len(keys)
    lists = min(lists, n)
    sample = np.sort(rng.choice(n, size=min(n, 64 * lists), replace=False))
    x = _unit(np.asarray(keys[sample], dtype=np.float32))
    centroids = x[rng.choice(len(x), size=lists, replace=False)].copy()
    for _ in range(iterations):
        labels = assign(x, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, x)
        empty = np.bincount(labels, minlength=lists) == 0
        sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]  # reseed empty lists
        centroids = _unit(sums)
    return centroids


@dataclass
class IvfIndex:
    centroids: np.ndarray
    order: np.ndarray
    offsets: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray, lists: int, seed: int = 0) -> IvfIndex:
        centroids = train_centroids(keys, lists, seed=seed)
        labels = assign(keys, centroids)
        order = np.argsort(labels, kind="stable").astype(np.int64)
        offsets = np.zeros(len(centroids) + 1, np.int64)
        np.cumsum(np.bincount(labels, minlength=len(centroids)), out=offsets[1:])
        return cls(centroids.astype(np.float32), order, offsets)

    def save(self, folder: Path) -> None:
        for name in FILES:
            np.save(folder / f"{name}.npy", getattr(self, name.removeprefix("ivf_")))

    @classmethod
    def load(cls, folder: Path) -> IvfIndex:
        missing = [f"{n}.npy" for n in FILES if not (folder / f"{n}.npy").is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: IVF index files missing ({', '.join(missing)}); rebuild the database")
        return cls(*(np.load(folder / f"{n}.npy") for n in FILES))


class IvfSearcher:
    """Search over an :class:`IvfIndex`, with the keys copied to float32 and grouped by list once."""

    def __init__(self, index: IvfIndex, keys: np.ndarray) -> None:
        self.index = index
        self.grouped = np.asarray(keys[index.order], dtype=np.float32)

    def search(self, queries: np.ndarray, count: int, probe: int) -> np.ndarray:
        """Rows of the ``count`` best keys per query (B, count), -1 where the probed lists hold fewer."""
        idx = self.index
        b = len(queries)
        probe = min(probe, len(idx.centroids))
        near = np.argpartition(-(queries @ idx.centroids.T), probe - 1, axis=1)[:, :probe]  # (B, P)
        scores = np.full((b, probe, count), -np.inf, np.float32)
        rows = np.full((b, probe, count), -1, np.int64)
        flat = near.ravel()
        by_list = np.argsort(flat, kind="stable")
        lists, starts = np.unique(flat[by_list], return_index=True)
        bounds = np.append(starts, len(flat))
        for lst, lo, hi in zip(lists, bounds[:-1], bounds[1:]):
            a, z = idx.offsets[lst], idx.offsets[lst + 1]
            if a == z:
                continue
            members = by_list[lo:hi]
            q, p = members // probe, members % probe
            s = queries[q] @ self.grouped[a:z].T  # (g, n_list)
            take = min(count, z - a)
            if z - a > take:
                top = np.argpartition(s, z - a - take, axis=1)[:, -take:]
                s = np.take_along_axis(s, top, axis=1)
            else:
                top = np.broadcast_to(np.arange(z - a), s.shape)
            scores[q, p, :take] = s
            rows[q, p, :take] = idx.order[a + top]
        scores, rows = scores.reshape(b, -1), rows.reshape(b, -1)
        best = np.argsort(-scores, axis=1, kind="stable")[:, :count]
        return np.take_along_axis(rows, best, axis=1)
