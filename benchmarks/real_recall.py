"""HNSW and IVF recall@10 against exact search on a real database's keys (e.g. the default model's CLAP embeddings).

    python benchmarks/real_recall.py DB_FOLDER [--queries QUERIES.npy] [--expansion 16 64 256] [--probe 1 2 4 8]

Builds an HNSW index over the database's keys with its graph settings (whatever
its size: small databases search exactly in production) and queries it with
every key (leave-one-out: the item itself is not counted) or with the given
query embeddings, at each search expansion; then the same for an IVF index
(about 2·√N lists) at each probe count. Prints recall@10 and queries/s.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from usearch.index import Index, MetricKind, search

from reaudio.engine.retrieval.database import RetrievalDB

K = 10


def recall(found: np.ndarray, exact: np.ndarray, leave_one_out: bool) -> float:
    recalls = []
    for q, (f, e) in enumerate(zip(found, exact)):
        if leave_one_out:
            f, e = [x for x in f if x != q][:K], [x for x in e if x != q][:K]
        recalls.append(len(set(f) & set(e)) / K)
    return round(float(np.mean(recalls)), 4)


def measure_ivf(keys: np.ndarray, queries: np.ndarray, leave_one_out: bool, probes: list[int]) -> list[dict]:
    from reaudio.engine.retrieval.ivf import IvfIndex, IvfSearcher, default_lists

    extra = 1 if leave_one_out else 0
    exact = np.asarray(search(keys, queries, K + extra, MetricKind.Cos, exact=True).keys)
    lists = default_lists(len(keys))
    searcher = IvfSearcher(IvfIndex.build(keys, lists), keys)
    rows = []
    for probe in probes:
        start = time.perf_counter()
        found = searcher.search(queries, K + extra, probe)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "items": len(keys),
                "queries": len(queries),
                "index": "ivf",
                "lists": lists,
                "probe": probe,
                "recall_at_10": recall(found, exact, leave_one_out),
                "queries_per_s": round(len(queries) / seconds),
            }
        )
    return rows


def measure(
    keys: np.ndarray,
    queries: np.ndarray,
    leave_one_out: bool,
    connectivity: int,
    expansion_add: int,
    expansions: list[int],
) -> list[dict]:
    extra = 1 if leave_one_out else 0
    exact = np.asarray(search(keys, queries, K + extra, MetricKind.Cos, exact=True).keys)
    rows = []
    for expansion in expansions:
        index = Index(
            ndim=keys.shape[1],
            metric="cos",
            dtype="f16",
            connectivity=connectivity,
            expansion_add=expansion_add,
            expansion_search=expansion,
        )
        index.add(np.arange(len(keys)), keys)
        start = time.perf_counter()
        found = np.asarray(index.search(queries, K + extra).keys)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "items": len(keys),
                "queries": len(queries),
                "connectivity": connectivity,
                "expansion_search": expansion,
                "recall_at_10": recall(found, exact, leave_one_out),
                "queries_per_s": round(len(queries) / seconds),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("db", help="retrieval database folder (or a bundle's retrieval/)")
    parser.add_argument("--queries", help=".npy of query embeddings (default: the keys, leave-one-out)")
    parser.add_argument("--expansion", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--probe", type=int, nargs="+", default=[1, 2, 4, 8], help="IVF lists scored per query")
    args = parser.parse_args()
    db = RetrievalDB(args.db)
    keys = np.asarray(db.arrays["keys"], dtype=np.float32)
    queries = np.load(args.queries).astype(np.float32) if args.queries else keys
    for row in measure(
        keys, queries, args.queries is None, db.info.connectivity, db.info.expansion_add, args.expansion
    ):
        print(json.dumps(row))
    for row in measure_ivf(keys, queries, args.queries is None, args.probe):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
