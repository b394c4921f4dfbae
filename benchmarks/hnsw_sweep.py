"""HNSW settings sweep on the retrieval benchmark's synthetic keys: recall@10 and queries/s per setting.

python -m benchmarks.hnsw_sweep 100000        # items; 1000 queries, k = 10
"""

from __future__ import annotations

import sys
import time

import numpy as np
from usearch.index import Index, MetricKind, search

from benchmarks.test_retrieval_bench import clustered_keys

SETTINGS = [(16, 128, "f16"), (32, 256, "f16"), (32, 256, "i8")]  # connectivity, expansion_add, dtype
EXPANSIONS = (32, 64, 128)


def main() -> None:
    n, dim = int(sys.argv[1]), 512
    keys = clustered_keys(n, dim)
    queries = clustered_keys(1000, dim, seed=1, clusters=max(1, n // 100))
    exact = np.asarray(search(keys, queries, 10, MetricKind.Cos, exact=True).keys)
    for connectivity, expansion_add, dtype in SETTINGS:
        index = Index(ndim=dim, metric="cos", dtype=dtype, connectivity=connectivity, expansion_add=expansion_add)
        start = time.perf_counter()
        index.add(np.arange(n), keys)
        build = time.perf_counter() - start
        for expansion in EXPANSIONS:
            index.expansion_search = expansion
            index.search(queries, 10)  # warm-up
            start = time.perf_counter()
            found = np.asarray(index.search(queries, 10).keys)
            seconds = time.perf_counter() - start
            recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
            print(
                f"n={n} connectivity={connectivity} expansion_add={expansion_add} dtype={dtype} "
                f"expansion_search={expansion} build_s={build:.1f} recall@10={recall:.4f} "
                f"queries/s={len(queries) / seconds:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
