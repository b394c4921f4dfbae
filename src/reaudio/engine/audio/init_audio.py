"""Real clips into the latent space: what audio-to-audio and neighbour-seeded generation start from.

A clip is brought to the level the model was trained at, fitted to the latent frames it will
fill, turned into the bundle's log-mel and encoded by the ``vae_encoder`` stage.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .audio_io import AudioLoadError, load_audio
from .frontend import MelConfig, log_mel
from .loudness import loudness_gain_db

#: The default model's VAE and LDM trained on clips at -20 LUFS; inputs are brought there.
INIT_LOUDNESS_LUFS = -20.0
INIT_PEAK_DBTP = -1.0


def read_init_audio(value, sample_rate: int, where: str) -> np.ndarray:
    """``Request.init_audio`` as mono float32 at ``sample_rate``: a path, or a waveform already at that rate."""
    if isinstance(value, (str, Path)):
        return load_audio(value, sample_rate)
    wave = np.asarray(value, dtype=np.float32)
    if wave.ndim != 1 or len(wave) == 0:
        raise AudioLoadError(
            f"{where}: init_audio waveform must be 1-D mono samples at {sample_rate} Hz (got shape {wave.shape})"
        )
    if not np.all(np.isfinite(wave)):
        raise AudioLoadError(f"{where}: init_audio contains NaN or infinite samples")
    return wave


def audio_file_problem(file: Path, bounds: tuple[float, float]) -> str:
    """Why ``file`` cannot start a clip ("" when it can): missing, unreadable, not ``bounds`` (lo, hi) s
    long, or holding NaN or infinite samples (read in blocks: memory stays small whatever its length)."""
    import soundfile as sf

    if not file.is_file():
        return "no such file"
    try:
        info = sf.info(str(file))
    except (sf.LibsndfileError, RuntimeError) as exc:
        return f"unreadable audio ({exc})"
    seconds = info.frames / info.samplerate if info.samplerate else 0.0
    lo, hi = bounds
    if not lo <= seconds <= hi:
        return f"{seconds:.2f} s long; a start clip must be {lo}..{hi} s"
    stat = file.stat()
    return _sample_problem(str(file.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sample_problem(path: str, size: int, mtime_ns: int) -> str:
    """Non-finite samples in a file (cached per file version: many rows may share one start clip)."""
    import soundfile as sf

    try:
        for block in sf.blocks(path, blocksize=1 << 16, dtype="float32", always_2d=True):
            if not np.all(np.isfinite(block)):
                return "the audio contains NaN or infinite samples"
    except (sf.LibsndfileError, RuntimeError) as exc:
        return f"unreadable audio ({exc})"
    return ""


def check_init_audio(value, sample_rate: int, where: str, seconds: tuple[float, float]) -> float:
    """Seconds of ``Request.init_audio``, checked without decoding it all (a path: its header)
    against ``seconds`` (lo, hi)."""
    if isinstance(value, (str, Path)):
        import soundfile as sf

        problem = audio_file_problem(Path(value), seconds)
        if problem:
            raise AudioLoadError(f"{where}: init_audio {value}: {problem}")
        info = sf.info(str(value))
        return info.frames / info.samplerate
    return len(read_init_audio(value, sample_rate, where)) / sample_rate


def fit_to(wave: np.ndarray, samples: int) -> np.ndarray:
    """``wave`` cut or zero-padded to ``samples``."""
    return np.pad(wave[:samples], (0, max(0, samples - len(wave))))


def training_gain_db(wave: np.ndarray, sample_rate: int) -> float:
    """The gain (dB) that brings ``wave`` to the loudness the models trained at (true peak at most -1 dBTP)."""
    return loudness_gain_db(wave, sample_rate, INIT_LOUDNESS_LUFS, INIT_PEAK_DBTP)


def training_level(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """``wave`` at the loudness the models trained at (true peak at most -1 dBTP); silence as is."""
    return (wave * 10 ** (training_gain_db(wave, sample_rate) / 20)).astype(np.float32)


def start_mels(mel_cfg: MelConfig, waves: list[np.ndarray], frames: int, per_frame: int) -> np.ndarray:
    """The log-mels (N, frames · r, n_mels) the vae_encoder sees for mono clips: each fitted to
    ``frames`` latent frames and brought to the level the model trained at."""
    samples = frames * per_frame
    mel_frames = samples // mel_cfg.hop_length
    mels = []
    for wave in waves:
        mel = log_mel(training_level(fit_to(wave, samples), mel_cfg.sample_rate), mel_cfg)
        mels.append(np.pad(mel[:mel_frames], ((0, max(0, mel_frames - len(mel))), (0, 0)), mode="edge"))
    return np.stack(mels).astype(np.float32)


#: Latent frames of context either side of an encoder chunk (the encoder's receptive field is
#: local, but for its mid-block attention, which would grow with the square of a long clip).
CHUNK_CONTEXT = 8


def encode_latents(
    runner, mel_cfg: MelConfig, waves: list[np.ndarray], frames: int, per_frame: int, chunk: int = 0
) -> np.ndarray:
    """Scaled latent means (N, C, frames, F) of mono clips (see :func:`start_mels`); with ``chunk``,
    clips longer than that many latent frames are encoded a chunk (plus context) at a time."""
    mels = start_mels(mel_cfg, waves, frames, per_frame)
    if not chunk or frames <= chunk:
        return runner.run({"mel": mels})[0]
    r = mels.shape[1] // frames
    parts = []
    for start in range(0, frames, chunk):
        lo, hi = max(0, start - CHUNK_CONTEXT), min(frames, start + chunk + CHUNK_CONTEXT)
        latent = runner.run({"mel": np.ascontiguousarray(mels[:, lo * r : hi * r])})[0]
        parts.append(latent[:, :, start - lo : start - lo + min(chunk, frames - start)])
    return np.concatenate(parts, axis=2)
