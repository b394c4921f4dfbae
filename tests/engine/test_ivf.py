"""The inverted-file index: its lists, its search against exact search, and its place in the database."""

from __future__ import annotations

import numpy as np
import pytest

from reaudio.engine.retrieval.database import DatabaseInfo, Items, RetrievalDB
from reaudio.engine.retrieval.ivf import IvfIndex, IvfSearcher, default_lists


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    centres = np.random.default_rng(7).standard_normal((clusters, dim))
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(keys: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ keys.T), axis=1, kind="stable")[:, :k]


def test_lists_partition_every_key():
    keys = clustered(2000)
    index = IvfIndex.build(keys, 16)
    assert sorted(index.order.tolist()) == list(range(2000))
    assert index.offsets[0] == 0 and index.offsets[-1] == 2000 and np.all(np.diff(index.offsets) >= 0)
    np.testing.assert_allclose(np.linalg.norm(index.centroids, axis=1), 1.0, rtol=1e-5)
    labels = np.argmax(keys @ index.centroids.T, axis=1)
    for lst in range(16):  # each list holds exactly the keys nearest its centroid
        members = index.order[index.offsets[lst] : index.offsets[lst + 1]]
        assert set(members.tolist()) == set(np.flatnonzero(labels == lst).tolist())


def test_probing_every_list_is_exact_search():
    keys, queries = clustered(1500), clustered(50, seed=1)
    searcher = IvfSearcher(IvfIndex.build(keys, 12), keys)
    found = searcher.search(queries, 10, probe=12)
    np.testing.assert_array_equal(found, exact_top(keys, queries, 10))


def test_few_probes_keep_recall_on_clustered_keys():
    keys, queries = clustered(4000, clusters=40), clustered(200, clusters=40, seed=1)
    searcher = IvfSearcher(IvfIndex.build(keys, default_lists(4000)), keys)  # 126 lists: ~3 per cluster
    found, exact = searcher.search(queries, 10, probe=8), exact_top(keys, queries, 10)
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.99


def test_short_lists_pad_with_minus_one():
    keys = clustered(30)
    searcher = IvfSearcher(IvfIndex.build(keys, 10), keys)
    found = searcher.search(clustered(3, seed=2), 25, probe=1)  # one list holds fewer than 25 keys
    assert (found == -1).any() and all(len(set(r[r >= 0])) == (r >= 0).sum() for r in found)


def test_database_with_ivf_index(tmp_path):
    keys = clustered(600)
    info = DatabaseInfo(
        key="audio",
        embed_dim=32,
        audio_tokens=1,
        audio_dim=2,
        caption_tokens=1,
        caption_dim=2,
        exact_threshold=100,
        index="ivf",
        ivf_lists=8,
        ivf_probe=8,
    )

    def items(rows):
        n = len(rows)
        return Items(
            [{"id": f"k{r}"} for r in rows],
            keys[rows],
            np.zeros((n, 1, 2), np.float16),
            np.zeros((n, 1, 2), np.float16),
            np.ones((n, 1), bool),
        )

    db = RetrievalDB.create(tmp_path / "db", info).add(items(np.arange(500)))
    assert (db.generation / "ivf_centroids.npy").is_file() and not (db.generation / "index.usearch").exists()
    queries = clustered(20, seed=3)
    stored = np.asarray(db.arrays["keys"], np.float32)  # fp16 on disk: compare against what is stored
    np.testing.assert_array_equal(db.search(queries, 5), exact_top(stored, queries, 5))
    banned = [{int(r) for r in row[:2]} for row in exact_top(stored, queries, 2)]
    assert all(not (set(row) & b) for row, b in zip(db.search(queries, 5, exclude=banned), banned))
    db = RetrievalDB(tmp_path / "db").add(items(np.arange(500, 600)))  # a new generation rebuilds the lists
    assert len(db) == 600 and db.search(keys[590:591], 1)[0, 0] == 590


def test_unknown_index_kind_is_refused():
    with pytest.raises(ValueError, match="index='annoy'; valid: hnsw, ivf"):
        DatabaseInfo(
            key="audio", embed_dim=4, audio_tokens=1, audio_dim=1, caption_tokens=1, caption_dim=1, index="annoy"
        )
