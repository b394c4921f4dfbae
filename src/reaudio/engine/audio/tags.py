"""Descriptions embedded in the audio files, where library tools look for them.

WAV: a Broadcast Wave ``bext`` chunk (EBU Tech 3285 v2: description, originator,
date, loudness and true peak) and the RIFF INFO title/comment (written by libsndfile).
FLAC: Vorbis comments (TITLE, DESCRIPTION, COMMENT and reaudio's own fields), via mutagen.
A loop also carries its loop points: in WAV a ``smpl`` chunk (the sampler chunk of the
RIFF multimedia spec, one forward loop over the whole file), in FLAC the LOOPSTART and
LOOPLENGTH comments that game engines and trackers read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

ORIGINATOR = "reaudio"
#: Size of bext's fixed part; CodingHistory (ASCII, optional) follows it.
BEXT_FIXED_BYTES = 602


@dataclass(frozen=True)
class ClipTags:
    """What a clip file says about itself."""

    title: str
    description: str
    loudness_lufs: float | None = None
    true_peak_db: float | None = None
    date: str = ""  # yyyy-mm-dd
    time: str = ""  # hh:mm:ss
    extra: dict[str, str] = field(default_factory=dict)  # prompt, seed, bundle…: FLAC fields, WAV comment
    loop: bool = False  # the whole file is a seamless loop

    def comment(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.extra.items())


def sndfile_strings(tags: ClipTags) -> dict[str, str]:
    """libsndfile string fields (RIFF INFO in WAV) set while the file is written."""
    return {"title": tags.title[:255], "comment": tags.comment()[:1000], "software": ORIGINATOR, "date": tags.date}


def _fixed(text: str, size: int) -> bytes:
    return text.encode("ascii", "replace")[:size].ljust(size, b"\0")


def _centi(value: float | None) -> int:
    """bext's loudness fields: int16 hundredths; 0x7FFF means "not given"."""
    if value is None or value != value or abs(value) > 327:
        return 0x7FFF
    return int(round(value * 100))


def bext_chunk(tags: ClipTags) -> bytes:
    body = b"".join(
        [
            _fixed(tags.description, 256),
            _fixed(ORIGINATOR, 32),
            _fixed(tags.extra.get("id", ""), 32),  # OriginatorReference
            _fixed(tags.date, 10),
            _fixed(tags.time, 8),
            struct.pack("<QH", 0, 2),  # TimeReference, Version 2
            b"\0" * 64,  # UMID
            struct.pack("<5h", _centi(tags.loudness_lufs), 0x7FFF, _centi(tags.true_peak_db), 0x7FFF, 0x7FFF),
            b"\0" * 180,
        ]
    )
    assert len(body) == BEXT_FIXED_BYTES
    return b"bext" + struct.pack("<I", len(body)) + body


def smpl_chunk(sample_rate: int, frames: int) -> bytes:
    """A sampler chunk with one forward loop over all ``frames`` (end is the last frame, inclusive)."""
    period_ns = round(1e9 / sample_rate)
    # manufacturer, product, sample period, MIDI unity note (60: middle C), pitch fraction,
    # SMPTE format, SMPTE offset, loop count, sampler data bytes
    head = struct.pack("<9I", 0, 0, period_ns, 60, 0, 0, 0, 1, 0)
    # cue point id, type (0: forward), start, end, fraction, play count (0: forever)
    loop = struct.pack("<6I", 0, 0, 0, max(0, frames - 1), 0, 0)
    return b"smpl" + struct.pack("<I", len(head) + len(loop)) + head + loop


def add_bext(path: str | Path, tags: ClipTags) -> None:
    """Insert a ``bext`` chunk after the ``fmt `` chunk of the RIFF/WAVE file at ``path`` (in place),
    and for a loop a ``smpl`` chunk after it."""
    path = Path(path)
    data = path.read_bytes()
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos, chunks = 12, []
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        end = pos + 8 + size + (size & 1)  # chunks are word-aligned
        chunks.append((cid, data[pos:end]))
        pos = end
    if not any(cid == b"fmt " for cid, _ in chunks):
        raise ValueError(f"{path}: no fmt chunk")
    fmt = dict(chunks)[b"fmt "]
    sample_rate, block_align = struct.unpack("<I", fmt[12:16])[0], struct.unpack("<H", fmt[20:22])[0]
    data_bytes = next((struct.unpack("<I", raw[4:8])[0] for cid, raw in chunks if cid == b"data"), 0)
    frames = data_bytes // max(1, block_align)
    out = []
    for cid, raw in chunks:
        if cid in (b"bext", b"smpl"):
            continue  # replaced
        out.append(raw)
        if cid == b"fmt ":
            out.append(bext_chunk(tags))
            if tags.loop:
                out.append(smpl_chunk(sample_rate, frames))
    body = b"WAVE" + b"".join(out)
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def tag_flac(path: str | Path, tags: ClipTags) -> None:
    from mutagen.flac import FLAC

    audio = FLAC(str(path))
    audio["TITLE"] = tags.title
    audio["DESCRIPTION"] = tags.description
    audio["COMMENT"] = tags.comment()
    audio["ENCODER"] = ORIGINATOR
    if tags.date:
        audio["DATE"] = tags.date
    if tags.loudness_lufs is not None:
        audio["REAUDIO_LOUDNESS_LUFS"] = f"{tags.loudness_lufs:.2f}"
    if tags.true_peak_db is not None:
        audio["REAUDIO_TRUE_PEAK_DBTP"] = f"{tags.true_peak_db:.2f}"
    for key, value in tags.extra.items():
        audio[f"REAUDIO_{key.upper()}"] = value
    if tags.loop:
        audio["LOOPSTART"] = "0"
        audio["LOOPLENGTH"] = str(audio.info.total_samples)
    audio.save()
