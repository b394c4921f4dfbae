"""The retrieval database: CLAP keys in a usearch index plus memory-mapped neighbour features.

Layout of a database folder::

    CURRENT              name of the live generation folder (swapped atomically)
    gen-000001/
        db.json          settings and provenance, item count
        items.jsonl      one item per row: id, caption, label, source, audio
        keys.npy         (N, E) float16 CLAP embeddings of kind ``key`` (audio, or legacy text)
        caption_keys.npy (N, E) float16 CLAP text embeddings of the captions (``caption_keys``)
        audio_tokens.npy (N, M, Da) float16 pooled audio tokens
        caption_tokens.npy (N, L, Dt) float16 caption token features
        caption_mask.npy (N, L) bool
        index.usearch    HNSW index (above ``exact_threshold`` items, index "hnsw")
        ivf_*.npy        inverted-file index (above ``exact_threshold`` items, index "ivf"; see ivf.py)

Every change writes a new generation and then swaps ``CURRENT``, so a crash
leaves either the old or the new database, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..bundle.dataclass_io import atomic_path, from_dict, to_dict, umask_mode, write_json_atomic
from ..bundle.manifest import sha256_file

log = logging.getLogger(__name__)
CURRENT = "CURRENT"
ARRAYS = ("keys", "audio_tokens", "caption_tokens", "caption_mask")
#: sha256 of every other file of a generation, written before the generation is renamed into place.
CHECKSUMS = "checksums.json"
INDEXES = ("hnsw", "ivf")
#: How a prompt's CLAP text embedding is matched: against the clips' audio embeddings,
#: their captions' text embeddings, or a weighted sum of both scores.
MODES = ("caption", "audio", "hybrid")


@dataclass(frozen=True)
class DatabaseInfo:
    """Settings and provenance of a database.

    Attributes:
        key: "audio" or "text": what ``keys.npy`` embeds.
        caption_keys: whether ``caption_keys.npy`` holds the captions' text embeddings beside
            audio keys (then "caption" and "hybrid" search work too).
        hybrid_weight: weight of the audio score in "hybrid" search (the caption score gets 1 − it).
        index_mode: the search mode the ANN index above ``exact_threshold`` covers ("": the
            keys' own kind); other modes are searched exactly there.
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
    caption_keys: bool = False
    hybrid_weight: float = 0.5
    index_mode: str = ""
    provenance: dict = field(default_factory=dict)
    #: The generation was written with its checksums.json: a missing one means it was altered.
    checksummed: bool = False

    def __post_init__(self) -> None:
        if self.index not in INDEXES:
            raise ValueError(f"index={self.index!r}; valid: {', '.join(INDEXES)}")
        if self.ivf_probe < 1 or self.ivf_lists < 0:
            raise ValueError(f"ivf_probe={self.ivf_probe} must be >= 1 and ivf_lists={self.ivf_lists} >= 0")
        if self.index_mode and self.index_mode not in self.modes:
            raise ValueError(f"index_mode={self.index_mode!r}; this database offers {', '.join(self.modes)}")
        if not 0.0 <= self.hybrid_weight <= 1.0:
            raise ValueError(f"hybrid_weight={self.hybrid_weight} must be in [0, 1]")

    @property
    def modes(self) -> tuple[str, ...]:
        """The search modes this database can answer."""
        if self.key == "text":
            return ("caption",)
        return MODES if self.caption_keys else ("audio",)

    @property
    def default_mode(self) -> str:
        return self.index_mode or ("caption" if self.key == "text" else "audio")


@dataclass
class Items:
    """New items and their features, row-aligned."""

    records: list[dict]
    keys: np.ndarray
    audio_tokens: np.ndarray
    caption_tokens: np.ndarray
    caption_mask: np.ndarray
    caption_keys: np.ndarray | None = None  # (N, E) text embeddings of the captions


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

    def __init__(self, folder: str | Path, verify: bool = False) -> None:
        """``verify``: check the generation's files against its ``checksums.json`` (a generation
        written before checksums existed is accepted as is)."""
        self.folder = Path(folder)
        self.verify = verify
        pointer = self.folder / CURRENT
        if not pointer.is_file():
            raise FileNotFoundError(f"{self.folder}: not a retrieval database ({CURRENT} missing)")
        for attempt in range(10):
            self.generation = self.folder / current_generation(self.folder)
            try:
                self._open_generation()
                break
            except FileNotFoundError:
                # A writer replaced this generation (and removed it) while we opened it: take the new one.
                if attempt == 9 or not pointer.is_file():
                    raise
        lengths = {name: len(a) for name, a in self.arrays.items()} | {"items": len(self.items)}
        if set(lengths.values()) != {self.info.count}:
            raise ValueError(f"{self.generation}: arrays disagree with db.json count {self.info.count}: {lengths}")
        self._index = None
        self._row_of = {item["id"]: row for row, item in enumerate(self.items)}

    def _open_generation(self) -> None:
        if self.verify:
            self.verify_checksums()
        self.info = from_dict(DatabaseInfo, json.loads((self.generation / "db.json").read_text("utf-8")))
        with open(self.generation / "items.jsonl", encoding="utf-8") as f:
            self.items = [json.loads(line) for line in f if line.strip()]
        names = ARRAYS + (("caption_keys",) if self.info.caption_keys else ())
        # Memory maps stay valid if a writer later removes the generation's files.
        self.arrays = {name: np.load(self.generation / f"{name}.npy", mmap_mode="r") for name in names}

    def verify_checksums(self) -> bool:
        """Raise ``ValueError`` naming the file that differs from the generation's checksums;
        False when the generation has none (written by an older reaudio)."""
        path = self.generation / CHECKSUMS
        if not path.is_file():
            if not (self.generation / "db.json").is_file():
                raise FileNotFoundError(self.generation / "db.json")
            if json.loads((self.generation / "db.json").read_text("utf-8")).get("checksummed"):
                raise ValueError(
                    f"{path}: missing, though this generation was written with it; the database was altered "
                    "(rebuild it, or remove and re-add the clips)"
                )
            return False
        for name, digest in json.loads(path.read_text(encoding="utf-8")).items():
            file = self.generation / name
            if not file.is_file():
                raise FileNotFoundError(f"{file}: listed in {CHECKSUMS} but missing")
            if sha256_file(file) != digest:
                raise ValueError(
                    f"{file}: checksum mismatch with {CHECKSUMS}; the database is corrupted "
                    "(rebuild it, or remove and re-add the clips)"
                )
        return True

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
            np.zeros((0, info.embed_dim), np.float16) if info.caption_keys else None,
        )
        _write_generation(folder, replace(info, count=0), empty)
        return cls(folder)

    # -- queries ----------------------------------------------------------------------

    def __len__(self) -> int:
        return self.info.count

    def search(
        self, queries: np.ndarray, k: int, exclude: list[set[int]] | None = None, mode: str | None = None
    ) -> np.ndarray:
        """Top-``k`` rows for each unit-norm query (B, E) → (B, k) int64, -1 where fewer exist.

        ``mode`` is one of :data:`MODES` this database offers (None: its default).
        ``exclude`` gives, per query, rows that must not be returned (the item itself
        and its same-source siblings during training and evaluation).
        """
        mode = mode or self.info.default_mode
        if mode not in self.info.modes:
            raise ValueError(
                f"retrieval mode {mode!r} not offered by the database {self.folder} "
                f"(it has: {', '.join(self.info.modes)}; rebuild it for caption keys)"
            )
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        b = len(queries)
        out = np.full((b, k), -1, dtype=np.int64)
        if k == 0 or self.info.count == 0:
            return out
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        count = min(self.info.count, k + extra)
        if self.info.count < self.info.exact_threshold or mode != self.info.default_mode:
            from usearch.index import MetricKind, search

            # Hybrid scores are dot products with a weighted sum of unit keys: not a cosine.
            metric = MetricKind.IP if mode == "hybrid" else MetricKind.Cos
            found = search(self.search_keys(mode), queries, count, metric, exact=True).keys
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

    def search_keys(self, mode: str) -> np.ndarray:
        """The (N, E) float32 matrix whose dot products with a query score ``mode``."""
        return _search_keys(self.info, self.arrays["keys"], self.arrays.get("caption_keys"), mode)

    def _ivf(self):
        if self._index is None:
            from .ivf import IvfIndex, IvfSearcher

            self._index = IvfSearcher(IvfIndex.load(self.generation), self.search_keys(self.info.default_mode))
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

    def retrieve(self, queries: np.ndarray, ks: list[int], modes: list[str]) -> tuple[Neighbours, list[list[dict]]]:
        """Query ``i``'s top ``ks[i]`` items by search mode ``modes[i]``, gathered for one batch (padded
        to the largest k, with one masked slot at least so shapes stay valid at k = 0), and each
        query's neighbours as records ``{"id", "caption"}``."""
        rows = np.full((len(ks), max(1, max(ks, default=0))), -1, dtype=np.int64)
        for mode in sorted(set(modes)) if len(self) else ():
            sel = [i for i, m in enumerate(modes) if m == mode]
            rows[sel] = self.search(queries[sel], rows.shape[1], mode=mode)
        for i, k in enumerate(ks):
            rows[i, k:] = -1
        records = [
            [{"id": self.items[j]["id"], "caption": self.items[j].get("caption", "")} for j in row if j >= 0]
            for row in rows
        ]
        return self.gather(rows), records

    def item_ids(self, rows: np.ndarray) -> list[list[str]]:
        return [[self.items[r]["id"] for r in row if r >= 0] for row in rows]

    # -- changes ----------------------------------------------------------------------

    def add(self, new: Items) -> RetrievalDB:
        """A new generation with ``new`` appended; returns the reopened database.

        Writers are serialised by a lock on the folder, and each merges into the generation
        that is current once it holds the lock, so concurrent adds lose nothing."""
        with _write_lock(self.folder):
            return RetrievalDB(self.folder)._add(new)

    def remove(self, item_ids: list[str]) -> RetrievalDB:
        """A new generation without ``item_ids``; returns the reopened database (locked like :meth:`add`)."""
        with _write_lock(self.folder):
            return RetrievalDB(self.folder)._remove(item_ids)

    def _add(self, new: Items) -> RetrievalDB:
        clash = sorted({r["id"] for r in new.records} & set(self._row_of))
        if clash:
            raise ValueError(f"item id(s) already in the database: {clash[:10]}; remove them first or rename")
        ids = [r["id"] for r in new.records]
        if len(set(ids)) != len(ids):
            raise ValueError("new items contain duplicate ids")
        self._check_shapes(new)
        merged = Items(
            self.items + list(new.records),
            *(
                np.concatenate([np.asarray(self.arrays[n]), getattr(new, n).astype(self.arrays[n].dtype)])
                for n in self._names()
            ),
        )
        _write_generation(self.folder, replace(self.info, count=len(merged.records)), merged)
        return RetrievalDB(self.folder)

    def _remove(self, item_ids: list[str]) -> RetrievalDB:
        missing = sorted(set(item_ids) - set(self._row_of))
        if missing:
            raise ValueError(f"no such item id(s) in the database: {missing[:10]}")
        drop = {self._row_of[i] for i in item_ids}
        keep = np.array([r for r in range(self.info.count) if r not in drop], dtype=np.int64)
        kept = Items([self.items[r] for r in keep], *(np.asarray(self.arrays[n])[keep] for n in self._names()))
        _write_generation(self.folder, replace(self.info, count=len(keep)), kept)
        return RetrievalDB(self.folder)

    def _names(self) -> tuple[str, ...]:
        return ARRAYS + (("caption_keys",) if self.info.caption_keys else ())

    def _check_shapes(self, new: Items) -> None:
        n = len(new.records)
        info = self.info
        expected = {
            "keys": (n, info.embed_dim),
            "audio_tokens": (n, info.audio_tokens, info.audio_dim),
            "caption_tokens": (n, info.caption_tokens, info.caption_dim),
            "caption_mask": (n, info.caption_tokens),
        }
        if info.caption_keys:
            if new.caption_keys is None:
                raise ValueError("this database keeps caption keys: the new items need caption_keys too")
            expected["caption_keys"] = (n, info.embed_dim)
        for name, shape in expected.items():
            if getattr(new, name).shape != shape:
                raise ValueError(f"new {name} has shape {getattr(new, name).shape}, expected {shape}")


@contextlib.contextmanager
def _write_lock(folder: Path):
    """An exclusive lock on the database folder for one change (waits for another writer)."""
    from filelock import FileLock, Timeout

    lock = FileLock(folder / ".write.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: waiting for another writer of this database", folder)
        lock.acquire(timeout=600)
    try:
        yield
    finally:
        lock.release()


def _search_keys(info: DatabaseInfo, keys, caption_keys, mode: str) -> np.ndarray:
    if mode == "caption" and info.key != "text":
        return np.asarray(caption_keys, dtype=np.float32)
    if mode == "hybrid":
        w = info.hybrid_weight
        return w * np.asarray(keys, dtype=np.float32) + (1 - w) * np.asarray(caption_keys, dtype=np.float32)
    return np.asarray(keys, dtype=np.float32)


_GENERATION = re.compile(r"gen-\d{6}")


def current_generation(folder: Path) -> str:
    """The live generation's folder name, as ``CURRENT`` names it. Only a name of ours
    (``gen-NNNNNN``: a folder inside this database) is accepted, before anything is read or removed."""
    pointer = Path(folder) / CURRENT
    if pointer.is_symlink():
        raise ValueError(f"{pointer}: a link; a database's pointer must be a file of its own")
    text = pointer.read_text(encoding="utf-8").strip()
    if not _GENERATION.fullmatch(text):
        raise ValueError(
            f"{pointer}: names {text[:80]!r}, not a generation of this database (gen-NNNNNN); "
            "the bundle is damaged or was crafted: rebuild its database"
        )
    return text


def stale_generations(folder: Path) -> list[Path]:
    """What killed writers left: generation folders other than the live one, and unfinished temporary
    ones (``.gen-NNNNNN.*``). Removed by the next change (under the write lock) and by ``db repair``."""
    live = current_generation(folder) if (folder / CURRENT).is_file() else None
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_dir()
        and not p.is_symlink()
        and ((_GENERATION.fullmatch(p.name) and p.name != live) or re.fullmatch(r"\.gen-\d{6}\..+", p.name))
    )


def _write_generation(folder: Path, info: DatabaseInfo, items: Items) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pointer = folder / CURRENT
    old = current_generation(folder) if pointer.is_file() else None
    for stale in stale_generations(folder):  # a killed writer's: the lock is ours, nobody reads them
        shutil.rmtree(stale, ignore_errors=True)
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
        if info.caption_keys:
            np.save(tmp / "caption_keys.npy", np.ascontiguousarray(items.caption_keys, dtype=np.float16))
        index_keys = _search_keys(info, items.keys, items.caption_keys, info.default_mode)
        if info.count >= info.exact_threshold and info.index == "ivf":
            from .ivf import IvfIndex, default_lists

            IvfIndex.build(index_keys, info.ivf_lists or default_lists(info.count)).save(tmp)
        elif info.count >= info.exact_threshold:
            from usearch.index import Index

            metric = "ip" if info.default_mode == "hybrid" else "cos"
            index = Index(
                ndim=info.embed_dim,
                metric=metric,
                dtype="f16",
                connectivity=info.connectivity,
                expansion_add=info.expansion_add,
                expansion_search=info.expansion_search,
            )
            # One thread: a multi-threaded build links the graph in a different order each run, so
            # the same database could answer differently from one build to the next.
            index.add(np.arange(info.count), index_keys, threads=1)
            index.save(str(tmp / "index.usearch"))
        write_json_atomic(tmp / "db.json", to_dict(replace(info, checksummed=True)))
        write_json_atomic(tmp / CHECKSUMS, {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()})
        os.replace(tmp, folder / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    with atomic_path(pointer) as tmp_pointer:
        tmp_pointer.write_text(name + "\n", encoding="utf-8")
    if old and (folder / old).is_dir():
        shutil.rmtree(folder / old, ignore_errors=True)
    log.info("retrieval database %s: generation %s with %d items", folder, name, info.count)
