"""``reaudio data import`` and ``reaudio data stats``: user datasets into clip manifests, and their long tail."""

from __future__ import annotations

import json
import logging
import zlib
from collections import Counter
from pathlib import Path

import soundfile as sf

from reaudio.engine.bundle.dataclass_io import atomic_path
from reaudio.engine.jobs.prompts import slugify
from reaudio.engine.jobs.records import read_records

from .data import read_corpus

log = logging.getLogger(__name__)
MIN_SECONDS = 0.3


class DatasetError(ValueError):
    def __init__(self, problems: list[str]) -> None:
        shown = problems[:50] + ([f"… and {len(problems) - 50} more"] if len(problems) > 50 else [])
        super().__init__(f"{len(problems)} problem(s):\n" + "\n".join("  " + p for p in shown))
        self.problems = problems


def split_of(source: str, test_percent: int = 10, valid_percent: int = 0) -> str:
    """Deterministic split by source recording: segments of one recording never straddle splits."""
    bucket = zlib.crc32(source.encode("utf-8")) % 100
    if bucket < test_percent:
        return "test"
    return "valid" if bucket < test_percent + valid_percent else "train"


def import_dataset(source: str | Path, out: str | Path, test_percent: int = 10) -> dict:
    """Turn a CSV/JSONL of (audio, caption[, label, source]) into a clip manifest; every bad row is reported."""
    source, out = Path(source), Path(out)
    problems: list[str] = []
    manifest, seen = [], set()
    rows = read_records(source, ("audio", "caption"), problems)
    if problems and not rows:
        raise DatasetError(problems)
    for line, row in rows:
        where = f"{source}:{line}"
        audio = Path(str(row.get("audio") or "").strip())
        caption = " ".join(str(row.get("caption") or "").split())
        if not str(audio) or str(audio) == ".":
            problems.append(f"{where}: missing audio path")
            continue
        path = audio if audio.is_absolute() else source.parent / audio
        if not caption:
            problems.append(f"{where}: empty caption")
        if not path.is_file():
            problems.append(f"{where}: audio file {path} not found")
            continue
        try:
            info = sf.info(str(path))
        except (sf.LibsndfileError, RuntimeError) as exc:
            problems.append(f"{where}: unreadable audio {path} ({exc})")
            continue
        if info.frames / info.samplerate < MIN_SECONDS:
            problems.append(f"{where}: {path} is {info.frames / info.samplerate:.2f} s; at least {MIN_SECONDS} s")
            continue
        clip_id = slugify(str(row.get("id") or path.stem), 96)
        while clip_id in seen:
            clip_id += "-x"
        seen.add(clip_id)
        origin = str(row.get("source") or path.resolve())
        manifest.append(
            {
                "id": clip_id,
                "audio": str(path.resolve()),
                "caption": caption,
                "label": str(row.get("label") or ""),
                "source": origin,
                "duration": round(info.frames / info.samplerate, 3),
                "split": split_of(origin, test_percent),
            }
        )
    if problems:
        raise DatasetError(problems)
    with atomic_path(out) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in manifest), encoding="utf-8")
    counts = Counter(r["split"] for r in manifest)
    return {"clips": len(manifest), **dict(counts), "hours": sum(r["duration"] for r in manifest) / 3600}


def dataset_stats(manifest: str | Path, out: str | Path) -> dict:
    """Label frequencies of the train split (JSON) and a long-tail bar chart (PNG, the paper's Figure 1)."""
    clips = read_corpus(manifest)
    counts = Counter(c.label or "(unlabelled)" for c in clips if c.split == "train")
    ordered = counts.most_common()
    stats = {
        "clips": len(clips),
        "train_clips": sum(counts.values()),
        "labels": len(counts),
        "labels_with_1_clip": sum(1 for _, n in ordered if n == 1),
        "labels_with_100_or_more": sum(1 for _, n in ordered if n >= 100),
        "frequencies": dict(ordered),
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_stats.json").write_text(json.dumps(stats, indent=2, ensure_ascii=False), encoding="utf-8")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: long-tail chart skipped")
        return stats
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(range(len(ordered)), [n for _, n in ordered], width=1.0, color="#4c72b0")
    ax.set_yscale("log")
    ax.set_xlabel(f"labels, most frequent first ({len(ordered)})")
    ax.set_ylabel("training clips")
    ax.set_title("Label frequency (long tail)")
    fig.tight_layout()
    fig.savefig(out / "long_tail.png", dpi=120)
    plt.close(fig)
    return stats
