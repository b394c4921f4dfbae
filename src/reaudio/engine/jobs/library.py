"""The output sound library: audio files written atomically plus an append-only JSONL index (``library.jsonl``).

A clip counts as finished only when its index line exists and its file
verifies (size and sha256). A clip is written to a partial file of ours, listed
in the index, and only then renamed to its name: a crash in between means the
clip is generated again (its line dropped first), never half-written, never
listed twice; and a file at a planned name that no line lists is someone
else's, which a job refuses to replace without ``--overwrite-foreign``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
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
#: A clip is written first as ``.NAME.XXXXXXXX.reaudio`` (8 random characters), then renamed: a
#: name no user file has, so cleaning up after a killed run removes only files of ours.
PARTIAL_SUFFIX = ".reaudio"
_PARTIAL = re.compile(r"\..+\.[A-Za-z0-9_]{8}" + re.escape(PARTIAL_SUFFIX))
#: Bytes the partial's name adds to a clip's: the longest name a job writes is NAME + this.
PARTIAL_EXTRA_BYTES = len(".") + len(".XXXXXXXX") + len(PARTIAL_SUFFIX)
MAX_NAME_BYTES = 255


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


#: Characters Windows refuses in file names (libraries get copied there), besides control characters.
WINDOWS_UNSAFE = '<>:"|?*'


def check_file_name(name: str, template: str) -> None:
    """A file name the template produced must be a plain, visible name of at most 255 bytes that
    Windows accepts too."""
    if "/" in name or "\\" in name or name.startswith(".") or name in ("", "..") or "\0" in name:
        raise ValueError(
            f"--name-template {template!r} gives {name!r}: it must be a plain file name (no '/' or '\\', not hidden)"
        )
    unsafe = sorted({c for c in name if c in WINDOWS_UNSAFE or ord(c) < 32})
    if unsafe or name.endswith((" ", ".")):
        shown = ", ".join(repr(c) for c in unsafe) or "a trailing space or dot"
        raise ValueError(
            f"--name-template {template!r} gives {name!r}, with {shown}: Windows refuses such names "
            f"(no {WINDOWS_UNSAFE}, control characters, or trailing space or dot)"
        )
    size = len(name.encode("utf-8"))
    if size + PARTIAL_EXTRA_BYTES > MAX_NAME_BYTES:
        raise ValueError(
            f"--name-template {template!r} gives a name of {size} bytes ({name[:40]!r}…); file names hold at most "
            f"{MAX_NAME_BYTES}, and the partial file each clip is written to first adds {PARTIAL_EXTRA_BYTES}: "
            f"at most {MAX_NAME_BYTES - PARTIAL_EXTRA_BYTES} bytes"
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
        check_output_folder(Path(folder))
        self.folder = Path(folder)
        self.format = audio_format
        self.subtype = subtype
        self.index_path = self.folder / LIBRARY_INDEX
        self._lock = None
        self._made_folder = writable and not self.folder.exists()
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
            if self._made_folder and not self.index_path.exists():
                # A job stopped before its first clip (a settings error, say) leaves no folder behind.
                (self.folder / LOCK_FILE).unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    self.folder.rmdir()

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
            except (json.JSONDecodeError, UnicodeDecodeError):
                log.warning("%s:%d: not a library entry (a crash mid-append, or an edit); ignored, kept", path, number)
                continue
            problem = entry_problem(entry)
            if problem:
                log.warning("%s:%d: %s; ignored, kept", path, number, problem)
                continue
            entries[entry["key"]] = entry
        return entries

    def owned_files(self) -> set[str]:
        """The file names the index lists: what this library made, and may replace."""
        return {e["file"] for e in self.entries.values() if isinstance(e.get("file"), str)}

    def foreign(self, names) -> list[str]:
        """Those of ``names`` present in the folder (a link too) that the library did not make."""
        owned = self.owned_files()
        return [n for n in names if n not in owned and ((self.folder / n).exists() or (self.folder / n).is_symlink())]

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
        if (
            path.is_symlink()
            or not path.is_file()
            or path.stat().st_size != entry["bytes"]
            or sha256_file(path) != entry["sha256"]
        ):
            log.warning("%s: listed but missing or altered; it will be generated again", path)
            return False
        return True

    def write(
        self, file_name: str, waveform: np.ndarray, sample_rate: int, entry: dict, tags: ClipTags | None = None
    ) -> dict:
        """Write the audio to a partial file (with ``tags`` embedded), append its index line (fsynced),
        then rename the file into place.

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
        with atomic_path(path, suffix=PARTIAL_SUFFIX) as tmp:
            try:
                _write_audio(tmp, audio, sample_rate, self.format, self.subtype, tags and replace(tags, **measured))
            except sf.LibsndfileError as exc:  # libsndfile says only "System error."
                raise OSError(
                    _storage_errno(self.folder), f"cannot write {file_name}: {exc}", str(self.folder)
                ) from exc
            # The index lists the file before it takes its name, so a file at a planned name that no
            # line lists was never this library's (a crash between the two redoes the clip).
            entry = {
                **entry,
                "gain_db": round(entry.get("gain_db", 0.0) + 20 * float(np.log10(gain)), 3),
                **measured,
                "file": file_name,
                "bytes": tmp.stat().st_size,
                "sha256": sha256_file(tmp),
            }
            self._append(entry)
        self.entries[entry["key"]] = entry
        return entry

    def _append(self, entry: dict) -> None:
        # Opened anew for every line without following links: an index swapped for a link while the
        # job runs is refused, not written through.
        try:
            fd = os.open(self.index_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ValueError(
                    f"{self.index_path}: became a link while the job ran; reaudio never writes through links"
                ) from None
            raise
        with os.fdopen(fd, "a+b") as f:
            f.seek(0, os.SEEK_END)
            if f.tell():
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line cut short by a crash stays whole, on its own line
                    f.write(b"\n")
            f.write((json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())

    def drop(self, keys: list[str]) -> None:
        """Rewrite the manifest without ``keys``' entries (atomically; unreadable lines are kept), so a
        clip generated again is listed once."""
        keys = set(keys) & set(self.entries)
        if not keys:
            return
        if self.index_path.is_symlink():
            raise ValueError(f"{self.index_path}: became a link while the job ran; reaudio never writes through links")
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
        """Remove the partial files interrupted writes of ours left (their name pattern only; never a
        link, nor anything else in the folder)."""
        count = 0
        for tmp in self.folder.glob(f".*{PARTIAL_SUFFIX}"):
            if _PARTIAL.fullmatch(tmp.name) and tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
                count += 1
        return count


LOCK_FILE = ".reaudio.lock"


#: The fields of an index line a job and the audition page rely on, and their types (None: may be null).
_ENTRY_FIELDS: dict[str, tuple[type, ...]] = {
    "key": (str,),
    "file": (str,),
    "bytes": (int,),
    "sha256": (str,),
}
_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "id": (str,),
    "prompt": (str,),
    "seed": (int,),
    "variation": (int,),
    "settings": (dict,),
    "neighbours": (list,),
    "candidates": (list,),
    "duration_s": (int, float),
    "sample_rate": (int,),
    "gain_db": (int, float),
    "loudness_lufs": (int, float, type(None)),
    "true_peak_db": (int, float, type(None)),
    "loop": (bool,),
}


def entry_problem(entry) -> str | None:
    """What is wrong with the shape of an index line (None: a usable entry)."""
    if not isinstance(entry, dict):
        return f"not an object but a {type(entry).__name__}"
    for name, kinds in _ENTRY_FIELDS.items():
        if name not in entry:
            return f"no {name!r}"
        if not isinstance(entry[name], kinds) or isinstance(entry[name], bool) and bool not in kinds:
            return f"{name!r} is a {type(entry[name]).__name__}, not {' or '.join(k.__name__ for k in kinds)}"
    for name, kinds in _OPTIONAL_FIELDS.items():
        value = entry.get(name)
        if name in entry and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
            return f"{name!r} is a {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}"
    return None


def check_output_folder(folder: Path) -> None:
    """``--out`` must be a new folder, an empty one (hidden files aside) or a library (it holds
    ``library.jsonl``): a job never makes its library in a folder of other files."""
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise ValueError(f"--out {folder}: not a folder (a file or a link); choose a new or empty folder")
    if not folder.is_dir() or (folder / LIBRARY_INDEX).is_file():
        return
    try:
        visible = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    except PermissionError as exc:
        raise ValueError(f"--out {folder}: cannot list it ({exc.strerror}); choose a folder you can write to") from None
    if visible:
        shown = ", ".join(visible[:3]) + (f" and {len(visible) - 3} more" if len(visible) > 3 else "")
        raise ValueError(
            f"--out {folder} is not empty and is not a reaudio library (no {LIBRARY_INDEX}; it holds {shown}): "
            "use a new or empty folder, or a library made by reaudio generate"
        )


def _storage_errno(folder: Path) -> int:
    """Why a write into ``folder`` failed, as the filesystem tells (libsndfile does not)."""
    try:
        stat = os.statvfs(folder)
    except OSError:
        return errno.EIO
    if stat.f_flag & os.ST_RDONLY:
        return errno.EROFS
    if stat.f_bavail * stat.f_frsize < 1 << 20:
        return errno.ENOSPC
    return errno.EIO


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
    """An exclusive, non-blocking lock on ``folder`` (released by the OS if the process dies).

    The lock file and its holder note are ours by name: neither is ever opened through a link (a
    planted link is refused, or replaced), and another job's note is shown only as ours reads."""
    from filelock import FileLock, Timeout

    path, info = folder / LOCK_FILE, folder / (LOCK_FILE + ".holder")
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ValueError(f"{path}: not a regular file (a link?); reaudio locks only a file of its own")
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise LibraryLocked(
            f"{folder} is being written by another reaudio job ({_holder(info)}); wait for it to "
            "finish or stop it, or choose another --out"
        ) from None
    import socket
    import time

    text = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    if info.is_symlink() or (info.exists() and not info.is_file()):
        info.unlink()  # the name is ours; whatever a link there points at is never touched
    fd = os.open(info, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return lock


_HOLDER = re.compile(r"pid \d+ on [^\n]{1,255} since [0-9: -]{19}")


def _holder(info: Path) -> str:
    """Who holds the lock, from its note: only a note of ours, read without following a link."""
    try:
        fd = os.open(info, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return "another process"
    with os.fdopen(fd, "rb") as f:
        text = f.read(512).decode("utf-8", "replace").strip()
    return text if _HOLDER.fullmatch(text) else "another process"
