"""``reaudio data build-sfx``: a long-tailed sound-effect corpus from Debian's game and sample packages.

Layout of the output folder::

    debs/<package>_<version>_all.deb     apt-get download (kept: a rerun downloads nothing)
    unpacked/<package>/                  dpkg-deb -x (zip/pk3 archives inside stay packed)
    audio/<package>/<id>.flac            segments, mono, at the front end's rate
    fullband/<package>/<id>.flac         the same segments at the source's own rate (≤ 48 kHz), when above it
    journal/<package>.jsonl              one line per source file: kept (with its clips) or dropped, why
    manifest.jsonl                       the clip manifest (id, audio, caption(s), label, source, …)
    report.json                          the summary: counts, hours, drops by reason, unknown labels

Work is recorded per source file in the journal after its segments are written,
so an interrupted build resumes where it stopped and a finished one does nothing.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from reaudio.engine.audio.audio_io import prepare_audio
from reaudio.engine.bundle.dataclass_io import atomic_path
from reaudio.engine.jobs.prompts import slugify

from .dataset_tools import MIN_SECONDS, split_of
from .sfx_captions import CaptionEntry, CaptionMap, tuxpaint_caption
from .sfx_sources import (
    ARCHIVE_SUFFIXES,
    AUDIO_SUFFIXES,
    HELDOUT_PACKAGES,
    PACKAGES,
    SourceFile,
    drop_reason,
    lookup_keys,
    refuse_reserved,
)

log = logging.getLogger(__name__)
#: A segment whose RMS is below this (dBFS) is silence.
SILENCE_DBFS = -60.0
#: Full-band copies are kept at the source's rate up to this one (sound designers deliver 48 kHz).
MAX_FULLBAND_RATE = 48000
#: A clip's bandwidth: the frequency under which this share of its energy lies.
BANDWIDTH_ENERGY = 0.99


@dataclass(frozen=True)
class CorpusConfig:
    """How to cut and where to put the corpus.

    Attributes:
        out: the corpus folder.
        sample_rate: the front end's rate (audio is resampled once, here).
        clip_seconds: segment length; longer files are cut, the last piece kept if ≥ ``min_tail_seconds``.
        max_segments: at most this many segments of one source file (long ambiences would swamp the corpus).
        packages: which of :data:`PACKAGES` to use.
        test_percent: share of source files in the test split.
        captions: a caption map file (None: the curated one).
        heldout: packages whose clips all go to the "heldout" split: never trained on, never in
            the retrieval database; the zero-shot evaluation (``reaudio eval --split heldout``).
    """

    out: Path
    sample_rate: int = 22050
    clip_seconds: float = 4.0
    min_tail_seconds: float = 1.0
    max_segments: int = 8
    packages: tuple[str, ...] = PACKAGES
    test_percent: int = 10
    captions: Path | None = None
    heldout: tuple[str, ...] = HELDOUT_PACKAGES


_APT_UPDATED: list[int] = []  # exit status of the one `apt-get update` a build may run


class CorpusError(RuntimeError):
    """The corpus cannot be built (a package cannot be fetched or unpacked)."""


def fetch_package(package: str, debs: Path, run: Callable = subprocess.run) -> Path:
    """The package's .deb in ``debs``, downloaded with ``apt-get download`` when absent."""
    refuse_reserved([package])
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if found:
        return found[-1]
    log.info("apt-get download %s", package)
    result = run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
    if result.returncode != 0 and not _APT_UPDATED:
        # A fresh machine has no package lists yet: fetch them once and try again.
        log.info("apt-get update (once)")
        _APT_UPDATED.append(run(["apt-get", "update"], capture_output=True, text=True).returncode)
        result = run(["apt-get", "download", package], cwd=debs, capture_output=True, text=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not found:
        raise CorpusError(
            f"apt-get download {package} failed (exit {result.returncode}): {result.stderr.strip()[-400:]}\n"
            "check `apt-get update` (run as root) and the package name, or put the .deb into " + str(debs)
        )
    return found[-1]


def unpack_package(deb: Path, unpacked: Path, package: str, run: Callable = subprocess.run) -> Path:
    """``dpkg-deb -x`` into ``unpacked/<package>`` (via a temporary folder, so a crash leaves nothing half-done)."""
    target = unpacked / package
    if target.is_dir():
        return target
    unpacked.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{package}-", dir=unpacked))
    result = run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusError(f"dpkg-deb -x {deb} failed: {result.stderr.strip()[-400:]}")
    tmp.rename(target)
    return target


def list_sources(package: str, root: Path) -> Iterator[SourceFile]:
    """Every audio file of an unpacked package, archive members included, in a stable order."""
    inside = root.resolve()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if not path.resolve().is_relative_to(inside):
            log.warning("%s: a link out of the unpacked package, skipped", path)
            continue
        rel = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        if suffix in AUDIO_SUFFIXES:
            yield SourceFile(package, rel)
        elif suffix in ARCHIVE_SUFFIXES:
            try:
                with zipfile.ZipFile(path) as archive:
                    names = sorted(n for n in archive.namelist() if n.lower().endswith(AUDIO_SUFFIXES))
            except zipfile.BadZipFile:
                log.warning("%s: not a readable archive, skipped", path)
                continue
            yield from (SourceFile(package, rel, name) for name in names)


class _Archives:
    """Open archives, kept open across members (0ad's is 3 GB: reopening it per file is slow)."""

    def __init__(self) -> None:
        self.open: dict[Path, zipfile.ZipFile] = {}

    def read(self, path: Path, member: str) -> bytes:
        if path not in self.open:
            self.open[path] = zipfile.ZipFile(path)
        return self.open[path].read(member)

    def close(self) -> None:
        for archive in self.open.values():
            archive.close()


@dataclass(frozen=True)
class Decoded:
    """A source file as the corpus keeps it: mono at the front end's rate and, when the source's rate is
    higher, mono at ``min(source rate, MAX_FULLBAND_RATE)`` (``fullband`` None otherwise)."""

    wav: np.ndarray
    source_rate: int
    fullband: np.ndarray | None
    fullband_rate: int


def decode(source: SourceFile, root: Path, sample_rate: int, archives: _Archives) -> Decoded:
    """The source's audio; raises ValueError/RuntimeError when corrupt."""
    path = root / source.path
    handle = io.BytesIO(archives.read(path, source.member)) if source.member else str(path)
    data, rate = sf.read(handle, dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("no samples")
    wav = prepare_audio(data, rate, sample_rate, where=source.key)
    if rate <= sample_rate:
        return Decoded(wav, rate, None, sample_rate)
    full_rate = min(rate, MAX_FULLBAND_RATE)
    return Decoded(wav, rate, prepare_audio(data, rate, full_rate, where=source.key), full_rate)


def bandwidth_hz(wav: np.ndarray, rate: int, share: float = BANDWIDTH_ENERGY) -> float:
    """The frequency under which ``share`` of the clip's energy lies (power spectrum of 2048-sample frames)."""
    n_fft = 2048
    if len(wav) < n_fft:
        wav = np.pad(wav, (0, n_fft - len(wav)))
    frames = np.lib.stride_tricks.sliding_window_view(wav, n_fft)[:: n_fft // 2]
    power = (np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2).sum(axis=0)
    cumulative = np.cumsum(power)
    if cumulative[-1] <= 0:
        return 0.0
    index = int(np.searchsorted(cumulative, share * cumulative[-1]))
    return float(index * rate / n_fft)


def segments(wav: np.ndarray, cfg: CorpusConfig, rate: int | None = None) -> list[np.ndarray]:
    """Cut into ``clip_seconds`` pieces; keep a short last piece only when it is long enough."""
    rate = rate or cfg.sample_rate
    size = int(round(cfg.clip_seconds * rate))
    pieces = [wav[i : i + size] for i in range(0, len(wav), size)]
    if len(pieces) > 1 and len(pieces[-1]) < cfg.min_tail_seconds * rate:
        pieces.pop()
    return pieces[: cfg.max_segments]


def is_silent(wav: np.ndarray) -> bool:
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return rms < 10 ** (SILENCE_DBFS / 20)


def _caption_for(source: SourceFile, root: Path, captions: CaptionMap) -> CaptionEntry | None:
    if source.package == "tuxpaint-stamps-default":
        return tuxpaint_caption(root / source.path, within=root)
    return captions.lookup(source)


def process_source(
    source: SourceFile, root: Path, cfg: CorpusConfig, captions: CaptionMap, archives: _Archives
) -> dict:
    """Decide, decode, cut and write one source file; returns its journal record."""
    record: dict = {"key": source.key}
    reason = drop_reason(source)
    if reason:
        return {**record, "status": "dropped", "reason": reason}
    entry = _caption_for(source, root, captions)
    if entry is None:
        return {
            **record,
            "status": "unknown",
            "reason": "label not in the caption map",
            "label": lookup_keys(source)[1],
        }
    try:
        decoded = decode(source, root, cfg.sample_rate, archives)
    except (ValueError, RuntimeError, sf.LibsndfileError, zipfile.BadZipFile, KeyError) as exc:
        return {**record, "status": "dropped", "reason": "corrupt", "detail": str(exc)[:200]}
    wav = decoded.wav
    duration = len(wav) / cfg.sample_rate
    if duration < MIN_SECONDS:
        return {**record, "status": "dropped", "reason": f"shorter than {MIN_SECONDS} s", "detail": f"{duration:.2f} s"}
    if is_silent(wav):
        return {**record, "status": "dropped", "reason": "silent"}
    split = split_of(source.key, cfg.test_percent)
    # The folder and file name say what it is; the digest of the whole key keeps long paths unique.
    tail = "-".join(source.inner_path.rsplit(".", 1)[0].split("/")[-2:])
    base = f"{slugify(f'{source.package}-{tail}', 80)}-{zlib.crc32(source.key.encode()):08x}"
    folder = cfg.out / "audio" / source.package
    folder.mkdir(parents=True, exist_ok=True)
    full_pieces = segments(decoded.fullband, cfg, decoded.fullband_rate) if decoded.fullband is not None else None
    clips = []
    for index, piece in enumerate(segments(wav, cfg)):
        if is_silent(piece):
            continue
        clip_id = f"{base}-{index:02d}"
        target = folder / f"{clip_id}.flac"
        with atomic_path(target) as tmp:
            sf.write(str(tmp), piece, cfg.sample_rate, format="FLAC", subtype="PCM_16")
        band = {"source_rate": decoded.source_rate}
        if full_pieces is not None and index < len(full_pieces):
            full_target = cfg.out / "fullband" / source.package / f"{clip_id}.flac"
            full_target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(full_target) as tmp:
                sf.write(str(tmp), full_pieces[index], decoded.fullband_rate, format="FLAC", subtype="PCM_16")
            band["fullband"] = full_target.relative_to(cfg.out).as_posix()
            band["fullband_rate"] = decoded.fullband_rate
            band["bandwidth_hz"] = round(bandwidth_hz(full_pieces[index], decoded.fullband_rate))
        else:
            band["bandwidth_hz"] = round(bandwidth_hz(piece, cfg.sample_rate))
        # Phrasings rotate over clips so one label's clips do not all share one caption.
        first = zlib.crc32(clip_id.encode()) % len(entry.captions)
        ordered = list(entry.captions[first:] + entry.captions[:first])
        clips.append(
            {
                "id": clip_id,
                "audio": target.relative_to(cfg.out).as_posix(),
                "caption": ordered[0],
                "captions": ordered,
                "label": entry.label,
                "package": source.package,
                "source": source.key,
                "duration": round(len(piece) / cfg.sample_rate, 3),
                "split": split,
                **band,
            }
        )
    if not clips:
        return {**record, "status": "dropped", "reason": "silent"}
    return {**record, "status": "kept", "clips": clips}


def _read_journal(path: Path) -> dict[str, dict]:
    done = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash: that source is redone
            done[record["key"]] = record
    return done


def build_package(package: str, cfg: CorpusConfig, captions: CaptionMap, progress: bool = True) -> list[dict]:
    """Fetch, unpack and process one package, resuming from its journal; returns all its records."""
    deb = fetch_package(package, cfg.out / "debs")
    root = unpack_package(deb, cfg.out / "unpacked", package)
    journal = cfg.out / "journal" / f"{package}.jsonl"
    journal.parent.mkdir(parents=True, exist_ok=True)
    done = _read_journal(journal)
    sources = list(list_sources(package, root))
    todo = [s for s in sources if s.key not in done]
    archives = _Archives()
    try:
        with open(journal, "a", encoding="utf-8") as out:
            for source in _progress(todo, package, progress):
                record = process_source(source, root, cfg, captions, archives)
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                out.flush()
                done[source.key] = record
    finally:
        archives.close()
    return [done[s.key] for s in sources]


def _progress(items: list, package: str, enabled: bool):
    if not enabled or not items:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=package, unit="file")


def build_corpus(cfg: CorpusConfig, progress: bool = True) -> dict:
    """Build (or finish) the corpus in ``cfg.out``; writes manifest.jsonl and report.json, returns the report."""
    refuse_reserved([*cfg.packages, *cfg.heldout])
    unknown_packages = sorted((set(cfg.packages) | set(cfg.heldout)) - set(PACKAGES))
    if unknown_packages:
        raise ValueError(f"unknown package(s) {unknown_packages}; the corpus uses only: {', '.join(PACKAGES)}")
    captions = CaptionMap.load(cfg.captions)
    cfg.out.mkdir(parents=True, exist_ok=True)
    records = []
    for package in cfg.packages:
        records += build_package(package, cfg, captions, progress)
    clips = [c for r in records if r["status"] == "kept" for c in r["clips"]]
    # Applied here, not in the journal, so changing the held-out set needs no rebuild.
    clips = [{**c, "split": "heldout"} if c["package"] in cfg.heldout else c for c in clips]
    seen: dict[str, str] = {}
    for clip in clips:
        if clip["id"] in seen:
            raise CorpusError(f"clip id {clip['id']} of {clip['source']} clashes with {seen[clip['id']]}")
        seen[clip["id"]] = clip["source"]
    with atomic_path(cfg.out / "manifest.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in clips), encoding="utf-8")
    report = summarize(records, clips)
    with atomic_path(cfg.out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report


def summarize(records: list[dict], clips: list[dict]) -> dict:
    labels = Counter(c["label"] for c in clips if c["split"] == "train")
    unknown = Counter(r["label"] for r in records if r["status"] == "unknown")
    return {
        "source_files": len(records),
        "kept_files": sum(r["status"] == "kept" for r in records),
        "clips": len(clips),
        "hours": round(sum(c["duration"] for c in clips) / 3600, 3),
        "splits": dict(Counter(c["split"] for c in clips)),
        "labels": len({c["label"] for c in clips}),
        "train_labels_with_1_clip": sum(1 for n in labels.values() if n == 1),
        "train_labels_with_100_or_more": sum(1 for n in labels.values() if n >= 100),
        "dropped": dict(Counter(r["reason"] for r in records if r["status"] == "dropped")),
        "unknown_label_files": sum(unknown.values()),
        "unknown_labels": dict(unknown.most_common()),
        "clips_per_package": dict(Counter(c["package"] for c in clips)),
        "fullband_clips": sum("fullband" in c for c in clips),
        "fullband_hours": round(sum(c["duration"] for c in clips if "fullband" in c) / 3600, 3),
        "clips_with_band_above_11khz": sum(c.get("bandwidth_hz", 0) > 11025 for c in clips),
    }


def describe(report: dict) -> str:
    return (
        f"{report['clips']} clips ({report['hours']:.2f} h) from {report['kept_files']} of "
        f"{report['source_files']} files; {report['labels']} labels "
        f"({report['train_labels_with_1_clip']} with 1 training clip, "
        f"{report['train_labels_with_100_or_more']} with ≥ 100); splits {report['splits']}; "
        f"dropped {report['dropped']}; full band kept for {report['fullband_clips']} clips "
        f"({report['fullband_hours']:.2f} h); {report['unknown_label_files']} files with "
        f"{len(report['unknown_labels'])} unknown labels (see report.json)"
    )
