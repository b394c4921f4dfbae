"""The retrieval database: CLAP keys in a usearch index plus memory-mapped neighbour features.

Layout of a database folder::

    CURRENT              name of the live generation folder (swapped atomically)
    gen-000001/
        db.json          settings and provenance, item count
        items.jsonl      one item per row: id, caption, label, source, audio
        keys.npy         (N, E) float16 CLAP embeddings that prompts are matched against
        audio_tokens.npy (N, M, Da) float16 pooled audio tokens
        caption_tokens.npy (N, L, Dt) float16 caption token features
        caption_mask.npy (N, L) bool
        index.usearch    HNSW index (above ``exact_threshold`` items, index "hnsw")
        ivf_*.npy        inverted-file index (above ``exact_threshold`` items, index "ivf"; see ivf.py)

Every change writes a new generation and then swaps ``CURRENT``, so a crash
leaves either the old or the new database, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .dataclass_io import atomic_path, from_dict, to_dict, umask_mode, write_json_atomic

log = logging.getLogger(__name__)
CURRENT = "CURRENT"
ARRAYS = ("keys", "audio_tokens", "caption_tokens", "caption_mask")
INDEXES = ("hnsw", "ivf")


@dataclass(frozen=True)
class DatabaseInfo:
    """Settings and provenance of a database.

    Attributes:
        key: "audio" or "text": what the keys embed.
        embed_dim: CLAP embedding width.
        audio_tokens, audio_dim: M and width of audio token features.
        caption_tokens, caption_dim: L and width of caption token features.
        count: number of items.
        exact_threshold: below this many items search is exact, above it ``index``.
        index: "hnsw" (usearch graph) or "ivf" (k-means lists scored exactly; faster at
            equal recall on clustered keys at a million items, see benchmarks/RESULTS.md).
        connectivity, expansion_add, expansion_search: HNSW graph degree and beam widths
            (higher: better recall, slower build/search).
        ivf_lists, ivf_probe: IVF list count (0: about 2·√N) and lists scored per query.
        provenance: free-form record of how it was built (CLAP checkpoint, manifest hash, …).
    """

    key: str
    embed_dim: int
    audio_tokens: int
    audio_dim: int
    caption_tokens: int
    caption_dim: int
    count: int = 0
    exact_threshold: int = 50_000
    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    index: str = "hnsw"
    ivf_lists: int = 0
    ivf_probe: int = 4
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.index not in INDEXES:
            raise ValueError(f"index={self.index!r}; valid: {', '.join(INDEXES)}")
        if self.ivf_probe < 1 or self.ivf_lists < 0:
            raise ValueError(f"ivf_probe={self.ivf_probe} must be >= 1 and ivf_lists={self.ivf_lists} >= 0")


@dataclass
class Items:
    """New items and their features, row-aligned."""

    records: list[dict]
    keys: np.ndarray
    audio_tokens: np.ndarray
    caption_tokens: np.ndarray
    caption_mask: np.ndarray


@dataclass
class Neighbours:
    """Retrieved contexts for a batch: ids (B, k) and the concatenated token features."""

    ids: np.ndarray
    caption_tokens: np.ndarray  # (B, k·L, Dt) float32
    caption_mask: np.ndarray  # (B, k·L) bool
    audio_tokens: np.ndarray  # (B, k·M, Da) float32
    audio_mask: np.ndarray  # (B, k·M) bool


class RetrievalDB:
    """A database folder opened for search and gathering; ``add``/``remove`` write new generations."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        pointer = self.folder / CURRENT
        if not pointer.is_file():
            raise FileNotFoundError(f"{self.folder}: not a retrieval database ({CURRENT} missing)")
        self.generation = self.folder / pointer.read_text(encoding="utf-8").strip()
        self.info = from_dict(DatabaseInfo, json.loads((self.generation / "db.json").read_text("utf-8")))
        with open(self.generation / "items.jsonl", encoding="utf-8") as f:
            self.items = [json.loads(line) for line in f if line.strip()]
        self.arrays = {name: np.load(self.generation / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
        lengths = {name: len(a) for name, a in self.arrays.items()} | {"items": len(self.items)}
        if set(lengths.values()) != {self.info.count}:
            raise ValueError(f"{self.generation}: arrays disagree with db.json count {self.info.count}: {lengths}")
        self._index = None
        self._row_of = {item["id"]: row for row, item in enumerate(self.items)}

    # -- creation ---------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | Path, info: DatabaseInfo) -> RetrievalDB:
        """An empty database in ``folder`` (which must not hold one already)."""
        folder = Path(folder)
        if (folder / CURRENT).exists():
            raise FileExistsError(f"{folder}: a retrieval database already exists here")
        empty = Items(
            [],
            np.zeros((0, info.embed_dim), np.float16),
            np.zeros((0, info.audio_tokens, info.audio_dim), np.float16),
            np.zeros((0, info.caption_tokens, info.caption_dim), np.float16),
            np.zeros((0, info.caption_tokens), bool),
        )
        _write_generation(folder, replace(info, count=0), empty)
        return cls(folder)

    # -- queries ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.info.count

    def search(self, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None) -> np.ndarray:
        """Top-``k`` rows for each unit-norm query (B, E) → (B, k) int64, -1 where fewer exist.

        ``exclude`` gives, per query, rows that must not be returned (the item itself
        and its same-source siblings during training and evaluation).
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        b = len(queries)
        out = np.full((b, k), -1, dtype=np.int64)
        if k == 0 or self.info.count == 0:
            return out
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        count = min(self.info.count, k + extra)
        if self.info.count < self.info.exact_threshold:
            from usearch.index import MetricKind, search

            keys = np.asarray(self.arrays["keys"], dtype=np.float32)
            found = search(keys, queries, count, MetricKind.Cos, exact=True).keys
        elif self.info.index == "ivf":
            found = self._ivf().search(queries, count, self.info.ivf_probe)
        else:
            found = self._hnsw().search(queries, count).keys
        found = np.asarray(found, dtype=np.int64).reshape(b, -1)
        for i in range(b):
            banned = exclude[i] if exclude else ()
            rows = [int(r) for r in found[i] if 0 <= r < self.info.count and int(r) not in banned][:k]
            out[i, : len(rows)] = rows
        return out

    def _ivf(self):
        if self._index is None:
            from .ivf import IvfIndex, IvfSearcher

            self._index = IvfSearcher(IvfIndex.load(self.generation), self.arrays["keys"])
        return self._index

    def _hnsw(self):
        if self._index is None:
            from usearch.index import Index

            path = self.generation / "index.usearch"
            self._index = Index.restore(str(path), view=True)
            if self._index is None:
                raise FileNotFoundError(f"{path}: HNSW index missing; rebuild the database")
            self._index.expansion_search = self.info.expansion_search
        return self._index

    def gather(self, rows: np.ndarray) -> Neighbours:
        """Concatenate the features of neighbour ``rows`` (B, k); -1 rows become masked padding."""
        b, k = rows.shape
        info = self.info
        cap = np.zeros((b, k, info.caption_tokens, info.caption_dim), np.float32)
        cap_mask = np.zeros((b, k, info.caption_tokens), bool)
        aud = np.zeros((b, k, info.audio_tokens, info.audio_dim), np.float32)
        aud_mask = np.zeros((b, k, info.audio_tokens), bool)
        valid = rows >= 0
        if valid.any():
            picked = rows[valid]
            cap[valid] = self.arrays["caption_tokens"][picked]
            cap_mask[valid] = self.arrays["caption_mask"][picked]
            aud[valid] = self.arrays["audio_tokens"][picked]
            aud_mask[valid] = True
        return Neighbours(
            ids=rows,
            caption_tokens=cap.reshape(b, k * info.caption_tokens, info.caption_dim),
            caption_mask=cap_mask.reshape(b, k * info.caption_tokens),
            audio_tokens=aud.reshape(b, k * info.audio_tokens, info.audio_dim),
            audio_mask=aud_mask.reshape(b, k * info.audio_tokens),
        )

    def item_ids(self, rows: np.ndarray) -> list[list[str]]:
        return [[self.items[r]["id"] for r in row if r >= 0] for row in rows]

    # -- changes ----------------------------------------------------------------------

    def add(self, new: Items) -> RetrievalDB:
        """A new generation with ``new`` appended; returns the reopened database."""
        clash = sorted({r["id"] for r in new.records} & set(self._row_of))
        if clash:
            raise ValueError(f"item id(s) already in the database: {clash[:10]}; remove them first or rename")
        ids = [r["id"] for r in new.records]
        if len(set(ids)) != len(ids):
            raise ValueError("new items contain duplicate ids")
        self._check_shapes(new)
        merged = Items(
            self.items + list(new.records),
            *(np.concatenate([np.asarray(self.arrays[n]), getattr(new, n).astype(self.arrays[n].dtype)])
              for n in ARRAYS),
        )  # fmt: skip
        _write_generation(self.folder, replace(self.info, count=len(merged.records)), merged)
        return RetrievalDB(self.folder)

    def remove(self, item_ids: list[str]) -> RetrievalDB:
        missing = sorted(set(item_ids) - set(self._row_of))
        if missing:
            raise ValueError(f"no such item id(s) in the database: {missing[:10]}")
        drop = {self._row_of[i] for i in item_ids}
        keep = np.array([r for r in range(self.info.count) if r not in drop], dtype=np.int64)
        kept = Items([self.items[r] for r in keep], *(np.asarray(self.arrays[n])[keep] for n in ARRAYS))
        _write_generation(self.folder, replace(self.info, count=len(keep)), kept)
        return RetrievalDB(self.folder)

    def _check_shapes(self, new: Items) -> None:
        n = len(new.records)
        info = self.info
        expected = {
            "keys": (n, info.embed_dim),
            "audio_tokens": (n, info.audio_tokens, info.audio_dim),
            "caption_tokens": (n, info.caption_tokens, info.caption_dim),
            "caption_mask": (n, info.caption_tokens),
        }
        for name, shape in expected.items():
            if getattr(new, name).shape != shape:
                raise ValueError(f"new {name} has shape {getattr(new, name).shape}, expected {shape}")


def _write_generation(folder: Path, info: DatabaseInfo, items: Items) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pointer = folder / CURRENT
    old = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    number = int(old.split("-")[1]) + 1 if old else 1
    name = f"gen-{number:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder))
    tmp.chmod(umask_mode(0o777))
    try:
        with open(tmp / "items.jsonl", "w", encoding="utf-8") as f:
            for record in items.records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        np.save(tmp / "keys.npy", np.ascontiguousarray(items.keys, dtype=np.float16))
        np.save(tmp / "audio_tokens.npy", np.ascontiguousarray(items.audio_tokens, dtype=np.float16))
        np.save(tmp / "caption_tokens.npy", np.ascontiguousarray(items.caption_tokens, dtype=np.float16))
        np.save(tmp / "caption_mask.npy", np.ascontiguousarray(items.caption_mask, dtype=bool))
        if info.count >= info.exact_threshold and info.index == "ivf":
            from .ivf import IvfIndex, default_lists

            IvfIndex.build(items.keys, info.ivf_lists or default_lists(info.count)).save(tmp)
        elif info.count >= info.exact_threshold:
            from usearch.index import Index

            index = Index(ndim=info.embed_dim, metric="cos", dtype="f16", connectivity=info.connectivity,
                          expansion_add=info.expansion_add, expansion_search=info.expansion_search)  # fmt: skip
            index.add(np.arange(info.count), np.asarray(items.keys, dtype=np.float32))
            index.save(str(tmp / "index.usearch"))
        write_json_atomic(tmp / "db.json", to_dict(info))
        os.replace(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with atomic_path(pointer) as tmp_pointer:
        tmp_pointer.write_text(name + "\n", encoding="utf-8")
    if old and (folder / old).is_dir():
        shutil.rmtree(folder / old, ignore_errors=True)
    log.info("retrieval database %s: generation %s with %d items", folder, name, info.count)
