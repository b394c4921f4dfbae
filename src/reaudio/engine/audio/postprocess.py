"""Clip post-processing: edge trimming, resampling, a BS.1770 loudness target under a true-peak
ceiling (all optional), and the trailing-silence trim of clips whose duration the engine chose."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .loudness import loudness_gain_db

#: The ranges a finishing setting may take (dB, LUFS, dBTP); the clip settings' schema reads them here.
TRIM_RANGE = (-120.0, 0.0)
LOUDNESS_RANGE = (-70.0, 0.0)
TRUE_PEAK_RANGE = (-60.0, 0.0)


@dataclass(frozen=True)
class PostProcess:
    """How a clip is finished before it is written; all off by default.

    Attributes:
        trim_db: trim leading/trailing audio quieter than this many dB below the clip's peak.
        sample_rate: resample to this rate (Hz) once, with soxr; None keeps the model's rate.
        loudness_lufs: bring the clip's integrated loudness (ITU-R BS.1770) to this many LUFS.
        true_peak_db: then lower the gain (never clip) so the 4× oversampled peak is at most this dBTP.
    """

    trim_db: float | None = None
    sample_rate: int | None = None
    loudness_lufs: float | None = None
    true_peak_db: float | None = None

    def __post_init__(self) -> None:
        for name, (low, high) in (
            ("trim_db", TRIM_RANGE),
            ("loudness_lufs", LOUDNESS_RANGE),
            ("true_peak_db", TRUE_PEAK_RANGE),
        ):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not low <= value <= high):
                raise ValueError(f"{name}={value!r} must be between {low:g} and {high:g}")
        if self.sample_rate is not None and self.sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate={self.sample_rate!r}; valid: {', '.join(map(str, SAMPLE_RATES))}")

    def finish(self, audio: np.ndarray, sample_rate: int, loop: bool = False) -> tuple[np.ndarray, int, float]:
        """The finished clip, its sample rate and the loudness gain applied (dB).

        A ``loop`` is never trimmed (that would cut the loop) and is resampled as one period of a
        periodic signal, so its seam stays seamless.
        """
        x = np.asarray(audio, dtype=np.float32)
        if loop and self.sample_rate is not None and self.sample_rate != sample_rate and x.size:
            x, sample_rate = resample_loop(x, sample_rate, self.sample_rate), self.sample_rate
        if self.trim_db is not None and x.size and np.any(x) and not loop:
            peak = float(np.abs(x).max())
            loud = np.flatnonzero(np.abs(x) >= peak * 10 ** (self.trim_db / 20))
            margin = int(0.01 * sample_rate)  # keep 10 ms around the sound
            x = x[max(0, loud[0] - margin) : loud[-1] + 1 + margin]
        if self.sample_rate is not None and self.sample_rate != sample_rate and x.size:
            import soxr

            x = soxr.resample(x, sample_rate, self.sample_rate, quality="VHQ").astype(np.float32)
            sample_rate = self.sample_rate
        gain_db = loudness_gain_db(x, sample_rate, self.loudness_lufs, self.true_peak_db)
        if gain_db:
            x = (x * 10 ** (gain_db / 20)).astype(np.float32)
        return x, sample_rate, gain_db


def resample_loop(x: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
    """One period of a loop at ``new_rate``: band-limited resampling through its Fourier series,
    which treats the clip as periodic, so no edge effect lands on the seam. The length is
    rounded to whole samples (the pitch moves by less than half a sample per loop)."""
    n = len(x)
    m = max(1, round(n * new_rate / rate))
    spectrum = np.fft.rfft(np.asarray(x, dtype=np.float64))
    bins = m // 2 + 1
    out = np.zeros(bins, dtype=np.complex128)
    keep = min(bins, len(spectrum))
    out[:keep] = spectrum[:keep]
    if m % 2 == 0 and keep == bins:  # the new Nyquist bin holds a real cosine only
        out[-1] = out[-1].real
    elif n % 2 == 0 and keep == len(spectrum) < bins:  # the old Nyquist bin counted once; now twice
        out[keep - 1] *= 0.5
    return (np.fft.irfft(out, n=m) * (m / n)).astype(np.float32)


#: Output rates a library may ask for (the model's own rate is always allowed by leaving it unset).
SAMPLE_RATES = (16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000)


def trim_tail(audio: np.ndarray, sample_rate: int, floor_db: float = -50.0, min_seconds: float = 0.25) -> np.ndarray:
    """``audio`` without its trailing near-silence: everything after the last 50-ms frame whose
    RMS is within ``floor_db`` of the loudest frame's, plus one frame, with a 10-ms fade-out."""
    frame = max(1, int(0.05 * sample_rate))
    n = len(audio) // frame
    if n < 2:
        return audio
    rms = np.sqrt(np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1))
    if rms.max() == 0.0:
        return audio
    last = int(np.flatnonzero(rms >= rms.max() * 10 ** (floor_db / 20))[-1])
    end = max(min((last + 2) * frame, len(audio)), min(len(audio), int(min_seconds * sample_rate)))
    if end >= len(audio):
        return audio
    out = np.array(audio[:end], dtype=np.float32)
    fade = min(len(out), int(0.01 * sample_rate))
    out[len(out) - fade :] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return out
