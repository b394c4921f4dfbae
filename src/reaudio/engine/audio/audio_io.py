"""Audio file loading: decode with soundfile, mix down to mono, resample with soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr


class AudioLoadError(ValueError):
    """An audio file could not be used; the message names the file and the reason."""


def load_audio(
    path: str | Path, sample_rate: int, *, mono: bool = True, max_seconds: float | None = None
) -> np.ndarray:
    """Read ``path`` as float32 at ``sample_rate``; mono (samples,) or (channels, samples).
    ``max_seconds``: read only that much from the start (a long file is never decoded whole)."""
    path = Path(path)
    if not path.is_file():
        raise AudioLoadError(f"{path}: no such audio file")
    try:
        frames = -1
        if max_seconds is not None:
            frames = max(1, round(max_seconds * sf.info(str(path)).samplerate))
        data, source_rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioLoadError(
            f"{path}: unreadable audio ({exc}); supported formats: {', '.join(sorted(sf.available_formats()))}"
        ) from exc
    if data.shape[0] == 0:
        raise AudioLoadError(f"{path}: the file holds no audio samples")
    return prepare_audio(data, source_rate, sample_rate, mono=mono, where=str(path))


def prepare_audio(
    data: np.ndarray, source_rate: int, sample_rate: int, *, mono: bool = True, where: str = "audio"
) -> np.ndarray:
    """Mix (samples, channels) audio down to mono and resample it to ``sample_rate``."""
    if data.ndim == 1:
        data = data[:, None]
    if not np.all(np.isfinite(data)):
        raise AudioLoadError(f"{where}: audio contains NaN or infinite samples")
    if mono:
        data = data.mean(axis=1, keepdims=True)
    if source_rate != sample_rate:
        data = soxr.resample(data, source_rate, sample_rate, quality="HQ")
    out = np.ascontiguousarray(data.T, dtype=np.float32)
    return out[0] if mono else out
