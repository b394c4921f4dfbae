"""The service's durable queue: every accepted job in SQLite before the service answers.

A job is ``queued`` when accepted, ``running`` while its clips are made, then ``done``, ``failed`` or
``cancelled``. A service killed at any point finds its jobs here when it starts again: ``running``
ones go back to ``queued`` (their finished clips are in the library and are not made again), so every
accepted job finishes exactly once. An ``Idempotency-Key`` is unique: a retried POST finds its job.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    clip_id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    body_sha256 TEXT NOT NULL,
    record TEXT NOT NULL,
    status TEXT NOT NULL,
    steps INTEGER NOT NULL,
    clips INTEGER NOT NULL,
    accepted REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    entries TEXT,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""


@dataclass(frozen=True)
class Job:
    id: str
    clip_id: str
    record: dict  # the prompt row, as accepted (an upload as its stored file name)
    status: str
    steps: int  # denoising steps of all its clips together
    clips: int
    accepted: float
    started: float | None
    finished: float | None
    error: str | None
    entries: list[dict]
    body_sha256: str
    idempotency_key: str | None


class IdempotencyConflict(ValueError):
    """An Idempotency-Key reused with another request body."""


class ClipIdTaken(ValueError):
    """A clip id another job has."""


class JobStore:
    """Jobs in ``path`` (SQLite, WAL); safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an answered POST survives a power cut too
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()  # one connection: every use under the lock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(
        self, record: dict, clip_id: str | None, steps: int, clips: int, body_sha256: str, key: str | None
    ) -> tuple[Job, bool]:
        """Store a new job (True), or return the one an earlier POST with ``key`` made (False)."""
        with self._lock:
            if key is not None:
                found = self._one("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))
                if found is not None:
                    if found.body_sha256 != body_sha256:
                        raise IdempotencyConflict(
                            f"Idempotency-Key {key!r} was used with another request (job {found.id})"
                        )
                    return found, False
            job_id = uuid.uuid4().hex[:20]
            clip_id = clip_id or job_id
            if self._one("SELECT * FROM jobs WHERE clip_id = ?", (clip_id,)) is not None:
                raise ClipIdTaken(f"id {clip_id!r} belongs to another job; leave id out or choose another")
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            self._db.execute(
                "INSERT INTO jobs (id, clip_id, idempotency_key, body_sha256, record, status, steps, clips, "
                "accepted, entries, seq) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, '[]', ?)",
                (job_id, clip_id, key, body_sha256, json.dumps(record), steps, clips, time.time(), seq),
            )
            return self.get(job_id), True

    def get(self, job_id: str) -> Job | None:
        return self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))

    def get_by_key(self, key: str) -> Job | None:
        """The job an ``Idempotency-Key`` made."""
        return self._one("SELECT * FROM jobs WHERE idempotency_key = ?", (key,))

    def claim(self) -> Job | None:
        """The oldest queued job, now ``running``."""
        with self._lock:
            job = self._one("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1", ())
            if job is None:
                return None
            self._db.execute("UPDATE jobs SET status = 'running', started = ? WHERE id = ?", (time.time(), job.id))
            return self.get(job.id)

    def finish(self, job_id: str, status: str, entries: list[dict] | None = None, error: str | None = None) -> None:
        if status not in FINAL:
            raise ValueError(f"status {status!r}; final ones: {', '.join(FINAL)}")
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = ?, finished = ?, entries = ?, error = ? WHERE id = ? AND status IN "
                "('queued', 'running')",
                (status, time.time(), json.dumps(entries or []), error, job_id),
            )

    def requeue_running(self) -> int:
        """Jobs a stopped service left ``running`` back to ``queued`` (at start-up); how many."""
        with self._lock:
            return self._db.execute(
                "UPDATE jobs SET status = 'queued', started = NULL WHERE status = 'running'"
            ).rowcount

    def count(self, *statuses: str) -> int:
        marks = ", ".join("?" * len(statuses))
        with self._lock:
            return self._db.execute(f"SELECT COUNT(*) FROM jobs WHERE status IN ({marks})", statuses).fetchone()[0]

    def _one(self, query: str, params: tuple) -> Job | None:
        with self._lock:
            cursor = self._db.execute(query, params)
            row = cursor.fetchone()
        if row is None:
            return None
        data = dict(zip([c[0] for c in cursor.description], row))
        return Job(
            id=data["id"],
            clip_id=data["clip_id"],
            record=json.loads(data["record"]),
            status=data["status"],
            steps=data["steps"],
            clips=data["clips"],
            accepted=data["accepted"],
            started=data["started"],
            finished=data["finished"],
            error=data["error"],
            entries=json.loads(data["entries"] or "[]"),
            body_sha256=data["body_sha256"],
            idempotency_key=data["idempotency_key"],
        )
