"""The output sound library: audio files written atomically plus an append-only JSONL manifest.

A clip counts as finished only when its manifest line exists and its file
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

from .dataclass_io import atomic_path
from .manifest import sha256_file

log = logging.getLogger(__name__)
LIBRARY_MANIFEST = "library.jsonl"
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16")}
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
            raise ValueError(f"--name-template {template!r}: {shown} is not allowed; only the bare fields {fields}")
    check_file_name(template.format(id="x", slug="x", seed=0, variation=0), template)


def check_file_name(name: str, template: str) -> None:
    """A file name the template produced must be a plain, visible name of at most 255 bytes."""
    if "/" in name or "\\" in name or name.startswith(".") or name in ("", "..") or "\0" in name:
        raise ValueError(f"--name-template {template!r} gives {name!r}: it must be a plain file name "
                         "(no '/' or '\\', not hidden)")  # fmt: skip
    if len(name.encode("utf-8")) > 255:
        raise ValueError(f"--name-template {template!r} gives a name of {len(name.encode('utf-8'))} bytes "
                         f"({name[:40]!r}…); file names hold at most 255")  # fmt: skip


class Library:
    """An output folder: ``library.jsonl`` plus one audio file per clip."""

    def __init__(self, folder: str | Path, audio_format: str = "wav") -> None:
        if audio_format not in FORMATS:
            raise ValueError(f"format={audio_format!r}; valid: {', '.join(FORMATS)}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.format = audio_format
        self.manifest_path = self.folder / LIBRARY_MANIFEST
        self.entries = self._read_entries()

    def _read_entries(self) -> dict[str, dict]:
        entries: dict[str, dict] = {}
        if not self.manifest_path.is_file():
            return entries
        data = self.manifest_path.read_bytes()
        good_end = 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # a line cut off by a crash mid-append
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                break
            entries[entry["key"]] = entry
            good_end += len(line)
        if good_end < len(data):
            log.warning("%s: dropping a partial last line left by an interrupted run", self.manifest_path)
            with open(self.manifest_path, "r+b") as f:
                f.truncate(good_end)
        return entries

    @staticmethod
    def key(clip_id: str, variation: int) -> str:
        return f"{clip_id}#{variation}"

    def is_finished(self, key: str) -> bool:
        """True when ``key`` is listed and its file is intact."""
        entry = self.entries.get(key)
        if entry is None:
            return False
        path = self.folder / entry["file"]
        if not path.is_file() or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            log.warning("%s: listed but missing or altered; it will be generated again", path)
            return False
        return True

    def write(self, file_name: str, waveform: np.ndarray, sample_rate: int, entry: dict) -> dict:
        """Write the audio atomically, then append its manifest line (fsynced).

        Audio that would pass full scale is scaled down to ``OVER_PEAK_DBFS`` rather than
        hard-clipped (clipping distorts); the applied gain is recorded as ``gain_db``.
        """
        kind, subtype = FORMATS[self.format]
        path = self.folder / file_name
        peak = float(np.max(np.abs(waveform))) if len(waveform) else 0.0
        gain = 10 ** (OVER_PEAK_DBFS / 20) / peak if peak > 1.0 else 1.0
        with atomic_path(path, suffix=".part") as tmp:
            sf.write(tmp, waveform * gain if gain != 1.0 else waveform, sample_rate, format=kind, subtype=subtype)
        entry = {**entry, "gain_db": round(20 * float(np.log10(gain)), 3), "file": file_name,
                 "bytes": path.stat().st_size, "sha256": sha256_file(path)}  # fmt: skip
        with open(self.manifest_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries[entry["key"]] = entry
        return entry

    def clean_partials(self) -> int:
        """Remove temp files of interrupted writes."""
        count = 0
        for tmp in self.folder.glob(".*.part"):
            tmp.unlink(missing_ok=True)
            count += 1
        return count
