"""A clip request checked whole before the service stores it: its fields, its uploaded clips (kept by
content under the service's state folder; never a path from the request), the prompt row, its clips
and their denoising steps. Every problem is a (field, reason) pair of :class:`RequestInvalid`."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from reaudio.engine import settings
from reaudio.engine.audio.init_audio import audio_file_problem
from reaudio.engine.bundle.dataclass_io import atomic_path
from reaudio.engine.denoising.sampler import start_step
from reaudio.engine.jobs.candidates import check_rankable
from reaudio.engine.jobs.generate_job import GenerateJob, candidates_for, plan_clips, request_for
from reaudio.engine.jobs.prompts import check_record

#: Files a request may upload, by field (a start clip; reference clips, several).
UPLOAD_FIELDS = ("init_audio", "reference")
MANY_UPLOADS = ("reference",)
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class RequestInvalid(ValueError):
    """A request the service refuses: every problem as (field, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{f}: {r}" for f, r in problems))
        self.problems = problems


class Intake:
    """Checks requests for one service: its job's defaults, its engine's planner, its upload folder."""

    def __init__(self, job: GenerateJob, engine, bundle: Path, uploads: Path, max_upload_bytes: int) -> None:
        self.job, self.engine, self.bundle = job, engine, bundle
        self.uploads, self.max_upload_bytes = uploads, max_upload_bytes

    def take(self, record, uploads: list[tuple[str, str, bytes]]) -> tuple[dict, str]:
        """The record with its uploads stored (their names in place of the files) and the request's
        digest (what an Idempotency-Key is held to)."""
        if not isinstance(record, dict):
            raise RequestInvalid([("body", "must be a JSON object of a prompt row's fields")])
        record = dict(record)
        problems = self._unknown_fields(record, uploads)
        if problems:  # with what is wrong in the known fields too, so one answer lists everything
            known = {k: v for k, v in record.items() if k in settings.row_fields() and k not in UPLOAD_FIELDS}
            _, more = check_record(known, 1, None) if known.get("prompt") else (None, [])
            raise RequestInvalid(problems + more)
        digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode())
        for name, file_name, data in uploads:
            stored = self._store_upload(name, file_name, data)
            if name in MANY_UPLOADS:
                record[name] = [*record.get(name, []), stored]
            elif name in record:
                raise RequestInvalid([(name, "uploaded twice; send one file")])
            else:
                record[name] = stored
            digest.update(name.encode() + b"\0" + stored.encode())
        return record, digest.hexdigest()

    def _unknown_fields(self, record: dict, uploads: list) -> list[tuple[str, str]]:
        allowed = set(settings.row_fields())
        problems = [
            (name, f"unknown field; valid: {', '.join(sorted(allowed - set(UPLOAD_FIELDS)))}")
            for name in record
            if name not in allowed
        ]
        for name in UPLOAD_FIELDS:
            if name in record:
                problems.append(
                    (
                        name,
                        f"the service reads no path from a request: upload the clip as the multipart part {name!r}",
                    )
                )
        for name, _, _ in uploads:
            if name not in UPLOAD_FIELDS:
                problems.append((name, f"unknown upload; valid: {', '.join(UPLOAD_FIELDS)}"))
        return problems

    def _store_upload(self, name: str, file_name: str, data: bytes) -> str:
        """An uploaded clip kept under the state folder, named by its content; its name relative to it."""
        if len(data) > self.max_upload_bytes:
            raise RequestInvalid([(name, f"{len(data)} bytes; at most {self.max_upload_bytes}")])
        stem = _SAFE_NAME.sub("-", Path(file_name or "clip.wav").name).strip(".-") or "clip.wav"
        relative = f"{hashlib.sha256(data).hexdigest()[:16]}/{stem[:100]}"
        path = self.uploads / relative
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        problem = audio_file_problem(path, settings.DURATION_RANGE)
        if problem:
            raise RequestInvalid([(name, f"uploaded {file_name!r}: {problem}")])
        return relative

    def row(self, record: dict, clip_id: str | None = None):
        row, problems = check_record({**record, **({"id": clip_id} if clip_id else {})}, 1, self.uploads)
        if problems:
            raise RequestInvalid(problems)
        return row

    def plan(self, record: dict):
        """The row, its clips and their denoising steps; every problem as :class:`RequestInvalid`."""
        row = self.row(record)
        try:
            clips = plan_clips(self.job, [row])
            requests = [request_for(self.job, c) for c in clips]
            counts = [candidates_for(self.job, c.row) for c in clips]
            check_rankable(self.engine.manifest, max(counts), self.bundle)
            resolved = self.engine.planner.resolve_all(requests[:1])[0]
        except ValueError as exc:
            text = re.sub(r"^(request \d+|--\S+ \S+|\S+:\d+): ", "", str(exc))
            named = re.match(r"--?(\w[\w-]*)|(\w+)[=: ]", str(exc).removeprefix("request 0: "))
            field_name = next((g for g in (named.groups() if named else ()) if g), "body").replace("-", "_")
            raise RequestInvalid([(field_name if field_name in settings.row_fields() else "body", text)]) from None
        per_clip = resolved.steps - start_step(resolved.steps, resolved.strength)
        return row, clips, per_clip * sum(counts)
