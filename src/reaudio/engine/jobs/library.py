"""The output sound library: audio files written atomically plus an append-only JSONL index (``library.jsonl``).

A clip counts as finished only when its index line exists and its file
verifies (size and sha256). A crash between writing a file and its line means
the clip is generated again and the file replaced: never half-written, never
listed twice.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio.loudness import integrated_lufs, true_peak_db
from ..audio.tags import ClipTags, add_bext, sndfile_strings, tag_flac
from ..bundle.dataclass_io import atomic_path
from ..bundle.manifest import sha256_file
from .library_lock import LibraryLocked

log = logging.getLogger(__name__)
LIBRARY_INDEX = "library.jsonl"
FORMATS = {"wav": "WAV", "flac": "FLAC"}
#: Sample formats per container: FLAC holds integers only.
SUBTYPES = {"wav": ("PCM_16", "PCM_24", "FLOAT"), "flac": ("PCM_16", "PCM_24")}
TEMPLATE_FIELDS = ("id", "slug", "seed", "variation")
#: Where audio that would pass full scale is brought down to (dBFS).
OVER_PEAK_DBFS = -0.1


def check_template(template: str) -> None:
    """Refuse a ``--name-template`` that is not literal text with bare ``{field}`` replacements:
    format specs, conversions and attribute/index access could build paths outside the library."""
    import string

    fields = ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"--name-template {template!r} is invalid ({exc}); fields: {fields}") from exc
    if not template:
        raise ValueError(f"--name-template is empty; use e.g. '{{id}}-v{{variation}}' (fields: {fields})")
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in TEMPLATE_FIELDS or spec or conversion:
            shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"--name-template {template!r}: {shown} is not allowed; only the bare fields: {fields}")
    check_file_name(template.format(id="x", slug="x", seed=0, variation=0), template)


def check_file_name(name: str, template: str) -> None:
    """A file name the template produced must be a plain, visible name of at most 255 bytes."""
    if "/" in name or "\\" in name or name.startswith(".") or name in ("", "..") or "\0" in name:
        raise ValueError(
            f"--name-template {template!r} gives {name!r}: it must be a plain file name (no '/' or '\\', not hidden)"
        )
    if len(name.encode("utf-8")) > 255:
        raise ValueError(
            f"--name-template {template!r} gives a name of {len(name.encode('utf-8'))} bytes "
            f"({name[:40]!r}…); file names hold at most 255"
        )


class Library:
    """An output folder: ``library.jsonl`` plus one audio file per clip.

    ``writable`` (a real job) creates the folder and holds an exclusive lock on it
    (``.reaudio.lock``) until :meth:`close`, so two jobs never write one library;
    otherwise (a dry run) nothing on disk is created or changed.
    """

    def __init__(
        self, folder: str | Path, audio_format: str = "wav", writable: bool = True, subtype: str = "PCM_16"
    ) -> None:
        check_format(audio_format, subtype)
        self.folder = Path(folder)
        self.format = audio_format
        self.subtype = subtype
        self.index_path = self.folder / LIBRARY_INDEX
        self._lock = None
        if writable:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = _take_lock(self.folder)
        self.entries = self._read_entries()

    def close(self) -> None:
        """Release the folder's lock (also when the process ends)."""
        if self._lock is not None:
            (self.folder / (LOCK_FILE + ".holder")).unlink(missing_ok=True)
            # The lock file itself stays: removing it could let two later jobs lock different files.
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_entries(self) -> dict[str, dict]:
        """The index's entries. Lines that do not parse (a crash mid-append, an edit) are
        reported as file:line and left where they are: reading never changes the file."""
        entries: dict[str, dict] = {}
        path = self.index_path
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise ValueError(f"{path}: not a regular file; the library index must be a plain file in {self.folder}")
        if not path.is_file():
            return entries
        for number, line in enumerate(path.read_bytes().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                key = entry["key"]
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
                log.warning("%s:%d: not a library entry (a crash mid-append, or an edit); ignored, kept", path, number)
                continue
            entries[key] = entry
        return entries

    @staticmethod
    def key(clip_id: str, variation: int) -> str:
        return f"{clip_id}#{variation}"

    def is_finished(self, key: str) -> bool:
        """True when ``key`` is listed and its file is intact."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        name = entry.get("file")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
            log.warning(
                "%s: entry %r names the file %r, not one of this folder; it will be generated again",
                self.index_path,
                key,
                name,
            )
            return False
        path = self.folder / name
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            log.warning("%s: listed but missing or altered; it will be generated again", path)
            return False
        return True

    def write(
        self, file_name: str, waveform: np.ndarray, sample_rate: int, entry: dict, tags: ClipTags | None = None
    ) -> dict:
        """Write the audio atomically (with ``tags`` embedded), then append its manifest line (fsynced).

        Audio that would pass full scale is scaled down to ``OVER_PEAK_DBFS`` rather than
        hard-clipped (clipping distorts); that gain is added to the entry's ``gain_db``. The
        entry records the written clip's loudness (LUFS) and true peak (dBTP).
        """
        from dataclasses import replace

        path = self.folder / file_name
        peak = float(np.max(np.abs(waveform))) if len(waveform) else 0.0
        gain = 10 ** (OVER_PEAK_DBFS / 20) / peak if peak > 1.0 else 1.0
        audio = waveform * gain if gain != 1.0 else waveform
        measured = {
            "loudness_lufs": _rounded(integrated_lufs(audio, sample_rate)),
            "true_peak_db": _rounded(true_peak_db(audio, sample_rate)),
        }
        with atomic_path(path, suffix=".part") as tmp:
            _write_audio(tmp, audio, sample_rate, self.format, self.subtype, tags and replace(tags, **measured))
        entry = {
            **entry,
            "gain_db": round(entry.get("gain_db", 0.0) + 20 * float(np.log10(gain)), 3),
            **measured,
            "file": file_name,
            "bytes": path.stat().st_size,
            "sha256": sha256_file(path),
        }
        with open(self.index_path, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash stays whole, on its own line
                    f.write(b"\n")
            f.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry["key"]] = entry
        return entry

    def drop(self, keys: list[str]) -> None:
        """Rewrite the manifest without ``keys``' entries (atomically; unreadable lines are kept), so a
        clip generated again is listed once."""
        keys = set(keys) & set(self.entries)
        if not keys:
            return
        kept = []
        for line in self.index_path.read_bytes().splitlines():
            try:
                if json.loads(line)["key"] in keys:
                    continue
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, KeyError):
                pass
            if line.strip():
                kept.append(line + b"\n")
        with atomic_path(self.index_path) as tmp:
            tmp.write_bytes(b"".join(kept))
        for key in keys:
            del self.entries[key]

    def clean_partials(self) -> int:
        """Remove temp files of interrupted writes."""
        count = 0
        for tmp in self.folder.glob(".*.part"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count


LOCK_FILE = ".reaudio.lock"


def check_format(audio_format: str, subtype: str) -> None:
    if audio_format not in FORMATS:
        raise ValueError(f"--format {audio_format!r}; valid: {', '.join(FORMATS)}")
    if subtype not in SUBTYPES[audio_format]:
        raise ValueError(
            f"--subtype {subtype!r} is not available for {audio_format}; valid: {', '.join(SUBTYPES[audio_format])}"
        )


def _rounded(value: float) -> float | None:
    return round(value, 2) if np.isfinite(value) else None  # JSON has no -inf: silence is null


def _write_audio(
    path: Path, audio: np.ndarray, sample_rate: int, audio_format: str, subtype: str, tags: ClipTags | None
) -> None:
    with sf.SoundFile(path, "w", sample_rate, 1, subtype=subtype, format=FORMATS[audio_format]) as f:
        if tags is not None and audio_format == "wav":
            for name, value in sndfile_strings(tags).items():
                if value:
                    setattr(f, name, value)
        f.write(np.asarray(audio, dtype=np.float32))
    if tags is None:
        return
    if audio_format == "wav":
        add_bext(path, tags)
    else:
        tag_flac(path, tags)


def _take_lock(folder: Path):
    """An exclusive, non-blocking lock on ``folder`` (released by the OS if the process dies)."""
    from filelock import FileLock, Timeout

    lock = FileLock(folder / LOCK_FILE)
    info = folder / (LOCK_FILE + ".holder")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = info.read_text(encoding="utf-8").strip() if info.is_file() else "another process"
        raise LibraryLocked(
            f"{folder} is being written by another reaudio job ({holder}); wait for it to "
            "finish or stop it, or choose another --out"
        ) from None
    import socket
    import time

    info.write_text(
        f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n", encoding="utf-8"
    )
    return lock
