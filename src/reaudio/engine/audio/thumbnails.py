"""Spectrogram thumbnails as PNG files, in NumPy and zlib (no imaging library at run time)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

#: Colour ramp from silence to the clip's loudest bin (dark blue → purple → orange → pale yellow).
_RAMP = np.array([[8, 10, 30], [60, 20, 110], [180, 50, 90], [245, 140, 40], [252, 240, 170]], dtype=np.float64)


def spectrogram_image(
    wav: np.ndarray, sample_rate: int, width: int = 160, height: int = 48, range_db: float = 70.0
) -> np.ndarray:
    """An RGB image (height, width, 3) uint8: log-frequency rows (low at the bottom), dB colours."""
    n_fft = 512
    x = np.asarray(wav, dtype=np.float64)
    if x.ndim > 1:
        x = x.mean(axis=1)
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    starts = np.linspace(0, max(len(x) - n_fft, 0), width).astype(np.int64)
    frames = np.zeros((width, n_fft))
    usable = min(n_fft, len(x))
    frames[:, :usable] = x[starts[:, None] + np.arange(usable)[None, :]]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=1)) ** 2  # (width, bins)
    freqs = np.fft.rfftfreq(n_fft, 1 / sample_rate)
    edges = np.geomspace(40.0, sample_rate / 2, height + 1)
    band = np.clip(np.searchsorted(edges, freqs) - 1, 0, height - 1)
    rows = np.zeros((height, width))
    np.add.at(rows, band, power.T)
    db = 10 * np.log10(rows + 1e-12)
    level = np.clip((db - (db.max() - range_db)) / range_db, 0.0, 1.0)[::-1]  # high frequencies on top
    pos = level * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit RGB PNG of ``image`` (height, width, 3) uint8."""
    height, width, _ = image.shape
    raw = b"".join(b"\0" + image[row].tobytes() for row in range(height))  # filter type 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
