"""Training data: the JSONL clip manifest and deterministic, resumable batch sampling."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reaudio.engine.jobs.records import read_records

#: "heldout": clips of packages kept out of training entirely (the zero-shot evaluation).
SPLITS = ("train", "valid", "test", "heldout")


@dataclass(frozen=True)
class Clip:
    """One manifest row. ``audio`` is resolved relative to the manifest's folder."""

    id: str
    audio: Path
    caption: str
    label: str = ""
    source: str = ""
    split: str = "train"
    #: The same clip at its source's own rate (above the models' rate), when the corpus kept one.
    fullband: Path | None = None


def read_corpus(path: str | Path) -> list[Clip]:
    """Rows of a corpus's clip list (JSONL or CSV: id, audio, caption, label, source, split); errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such manifest")
    clips, problems = [], []
    for line, row in read_records(path, ("id", "audio", "caption"), problems):
        missing = [k for k in ("id", "audio", "caption") if not row.get(k)]
        if missing:
            problems.append(f"{path}:{line}: missing {missing}")
            continue
        split = row.get("split", "train")
        if split not in SPLITS:
            problems.append(f"{path}:{line}: split={split!r}; valid: {', '.join(SPLITS)}")
            continue
        captions = row["caption"] if isinstance(row["caption"], list) else [row["caption"]]
        audio = Path(row["audio"])
        fullband = Path(row["fullband"]) if row.get("fullband") else None
        if fullband is not None and not fullband.is_absolute():
            fullband = path.parent / fullband
        clips.append(
            Clip(
                str(row["id"]),
                audio if audio.is_absolute() else path.parent / audio,
                captions[0],
                row.get("label", ""),
                row.get("source", "") or str(audio),
                split,
                fullband,
            )
        )
    if problems:
        raise ValueError("\n".join(problems))
    return clips


class ClipAudio:
    """Audio of a split, decoded once at the front end's rate and kept in memory.

    ``loudness_db``: normalise every clip to this integrated loudness (LUFS, peaks
    at most -1 dBFS); None keeps the levels as recorded.
    """

    def __init__(
        self, clips: list[Clip], sample_rate: int, clip_samples: int, loudness_db: float | None = None
    ) -> None:
        if not clips:
            raise ValueError("no clips in this split")
        self.clips = clips
        self.clip_samples = clip_samples
        # Here, not at import: a run from a payload (training/ldm_payload.py) reads no audio.
        from reaudio.engine.audio.audio_io import load_audio

        self.audio = [load_audio(c.audio, sample_rate) for c in clips]
        if loudness_db is not None:
            from .loudness import normalise_loudness

            self.audio = [normalise_loudness(w, sample_rate, loudness_db) for w in self.audio]

    def __len__(self) -> int:
        return len(self.clips)

    def segment(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """A clip_samples-long random segment (zero-padded when the clip is shorter)."""
        wav = self.audio[index]
        if len(wav) >= self.clip_samples:
            start = int(rng.integers(0, len(wav) - self.clip_samples + 1))
            return wav[start : start + self.clip_samples]
        return np.pad(wav, (0, self.clip_samples - len(wav)))


def step_indices(
    n: int, batch: int, seed: int, step: int, rank: int = 0, world: int = 1
) -> tuple[np.ndarray, np.random.Generator]:
    """The items of one rank at one step, and that step's generator.

    Everything random in a step derives from (seed, step, rank), so a run resumed at
    step s draws exactly what an uninterrupted run would have drawn.
    """
    rng = np.random.default_rng([seed, step])
    indices = rng.integers(0, n, size=batch * world)
    return indices[rank * batch : (rank + 1) * batch], np.random.default_rng([seed, step, rank, 1])
