"""How much of a clip lies in a frequency band, and how far two clips' bands differ.

These score the full-band output (the band-extension stage) against real clips: a band's level
relative to the 0-8 kHz band the models' log-mel sees, and the log-spectral distance inside a band.
"""

from __future__ import annotations

import numpy as np

#: Analysis frames for band measures: 2048-point Hann frames every 512 samples (46 ms at 44.1 kHz).
N_FFT, HOP = 2048, 512
#: The band the models' log-mel covers (its fmax), the reference of every relative level.
REFERENCE_BAND = (0.0, 8000.0)
#: A band relative level under this (dB) is taken as "no content": the source had no such band
#: (a clip resampled up from a lower rate) rather than a quiet one.
NO_BAND_DB = -75.0


def power_spectrogram(wav: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Power (frames, bins) of ``wav`` in Hann frames, and each bin's frequency in Hz."""
    x = np.asarray(wav, dtype=np.float64)
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    frames = 1 + (len(x) - N_FFT) // HOP
    index = np.arange(N_FFT)[None, :] + HOP * np.arange(frames)[:, None]
    spec = np.fft.rfft(x[index] * np.hanning(N_FFT), axis=1)
    return spec.real**2 + spec.imag**2, np.fft.rfftfreq(N_FFT, 1.0 / rate)


def band_energy(power: np.ndarray, freqs: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """Energy per frame in [low, high) Hz."""
    low, high = band
    return power[:, (freqs >= low) & (freqs < high)].sum(axis=1)


def relative_band_db(wav: np.ndarray, rate: int, band: tuple[float, float]) -> float:
    """The clip's energy in ``band`` relative to its energy in 0-8 kHz, in dB (over the whole clip).
    Minus infinity when the band lies above the clip's Nyquist frequency."""
    if band[0] >= rate / 2:
        return float("-inf")
    power, freqs = power_spectrogram(wav, rate)
    ref = band_energy(power, freqs, REFERENCE_BAND).sum()
    return float(10 * np.log10((band_energy(power, freqs, band).sum() + 1e-20) / (ref + 1e-20)))


def has_band(wav: np.ndarray, rate: int, band: tuple[float, float]) -> bool:
    """Does the clip carry content in ``band`` at all (not just the floor of a resampled source)?"""
    return relative_band_db(wav, rate, band) > NO_BAND_DB


def log_spectral_distance(reference: np.ndarray, test: np.ndarray, rate: int, band: tuple[float, float]) -> float:
    """Root-mean-square difference of the two clips' log power spectra (dB) in ``band``, averaged
    over frames that carry sound in the reference (above -60 dB of its loudest frame)."""
    n = min(len(reference), len(test))
    p_ref, freqs = power_spectrogram(reference[:n], rate)
    p_test, _ = power_spectrogram(test[:n], rate)
    inside = (freqs >= band[0]) & (freqs < band[1])
    frame_energy = p_ref.sum(axis=1)
    active = frame_energy > frame_energy.max() * 1e-6
    if not active.any():
        return float("nan")
    floor = 1e-10 * p_ref.max()
    diff = 10 * np.log10(p_ref[active][:, inside] + floor) - 10 * np.log10(p_test[active][:, inside] + floor)
    return float(np.mean(np.sqrt(np.mean(diff**2, axis=1))))


#: Cut-off frequencies of common lower source rates (their Nyquist frequencies).
COMMON_CUTOFFS_HZ = (8000.0, 11025.0, 16000.0)
#: A fall steeper than this across a cut-off (dB, 1 kHz either side) is a resampled source's edge.
EDGE_DROP_DB = 30.0


def source_cutoff_hz(wav: np.ndarray, rate: int, cutoffs=COMMON_CUTOFFS_HZ) -> float | None:
    """The lowest of ``cutoffs`` at which the clip's spectrum falls off a cliff (a source resampled up
    from twice that rate), or None: natural sounds roll off, resampled ones stop."""
    power, freqs = power_spectrogram(wav, rate)
    total = power.sum(axis=0)
    for cutoff in sorted(cutoffs):
        if cutoff + 1200 > rate / 2:
            break
        below = total[(freqs >= cutoff - 1200) & (freqs < cutoff - 200)].mean()
        above = total[(freqs >= cutoff + 200) & (freqs < cutoff + 1200)].mean()
        if below > 0 and 10 * np.log10((above + 1e-30) / below) < -EDGE_DROP_DB:
            return cutoff
    return None


#: The band the full-band target is scored in: above the 22.05-kHz chain's Nyquist frequency.
TOP_BAND = (11000.0, 16000.0)


def source_has_band(wav: np.ndarray, rate: int, band: tuple[float, float] = TOP_BAND) -> bool:
    """Did the clip's source carry ``band``: no resampling edge under its top, and content in it?"""
    cutoff = source_cutoff_hz(wav, rate)
    return (cutoff is None or cutoff >= band[1]) and has_band(wav, rate, band)


def top_band_levels(generated: list[np.ndarray], real: list[np.ndarray], rate: int, band=TOP_BAND) -> dict:
    """Median level of ``band`` relative to 0-8 kHz (dB) of generated clips and of their paired real
    clips, over the pairs whose real clip's source has that band; and of all generated clips."""
    has = [source_has_band(r, rate, band) for r in real]
    gen = [relative_band_db(g, rate, band) for g in generated]
    paired_gen = [g for g, h in zip(gen, has) if h]
    paired_real = [relative_band_db(r, rate, band) for r, h in zip(real, has) if h]
    return {
        "band_hz": list(band),
        "pairs_with_band": len(paired_real),
        "generated_db": float(np.median(paired_gen)) if paired_gen else None,
        "real_db": float(np.median(paired_real)) if paired_real else None,
        "all_generated_db": float(np.median(gen)) if gen else None,
    }
