"""Fit a :class:`~reaudio.models.mel_calibration.MelCalibration` for a VAE decoder on training clips."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from reaudio.engine.audio.audio_io import load_audio
from reaudio.engine.audio.frontend import MelConfig, log_mel
from reaudio.engine.audio.init_audio import training_level
from reaudio.models.mel_calibration import MelCalibration, band_mean, local_mean
from reaudio.models.vae import AutoencoderKL

from .data import read_corpus
from .evaluate import evenly_spaced

log = logging.getLogger(__name__)

MAX_SHARPEN = 3.0


@torch.no_grad()
def round_trip_mels(vae: AutoencoderKL, mel_cfg: MelConfig, audio: list[Path]) -> tuple[list, list]:
    """Each clip's log-mel (T, n_mels) as read, at the training level, and through ``vae`` (posterior mean)."""
    real, decoded = [], []
    for i, path in enumerate(audio):
        mel = log_mel(training_level(load_audio(path, mel_cfg.sample_rate), mel_cfg.sample_rate), mel_cfg)
        x = torch.from_numpy(mel)[None]
        decoded.append(vae.decode(vae.encode(x).mean, tuple(x.shape[-2:]))[0].numpy())
        real.append(mel)
        if (i + 1) % 50 == 0 or i + 1 == len(audio):
            log.info("calibration: %d of %d clips through the VAE", i + 1, len(audio))
    return real, decoded


def fit_calibration(real: list[np.ndarray], decoded: list[np.ndarray]) -> MelCalibration:
    """Per band: the affine map matching decoded frames' mean and spread to the real ones', then the
    sharpening along time that matches their frame-to-frame spread; last, one sharpening across
    bands that matches the band-to-band spread."""
    r, d = np.concatenate(real), np.concatenate(decoded)
    scale = r.std(0) / np.maximum(d.std(0), 1e-6)
    bias = r.mean(0) - d.mean(0) * scale
    mapped = [m * scale + bias for m in decoded]
    sharpen = _matching_sharpen(real, mapped, local_mean, axis=0)
    sharpened = [m + sharpen * (m - _apply(local_mean, m)) for m in mapped]
    sharpen_freq = float(_matching_sharpen(real, sharpened, band_mean, axis=1, per_band=False))
    return MelCalibration(*(tuple(float(v) for v in x) for x in (scale, bias, sharpen)), sharpen_freq)


def _apply(mean, m: np.ndarray) -> np.ndarray:
    return mean(torch.from_numpy(m[None].astype(np.float32)))[0].numpy()


def _matching_sharpen(real: list, mapped: list, mean, axis: int, per_band: bool = True) -> np.ndarray:
    """The s >= 0 for which ``m + s * (m - mean(m))`` has the real clips' mean squared step along
    ``axis``: the larger root of a quadratic in s (0 where the decoded steps are large enough)."""
    reduce = (lambda x: x.reshape(-1, x.shape[-1]).mean(0)) if per_band else (lambda x: x.mean())

    def steps(ms):
        return np.concatenate([np.diff(m, axis=axis) for m in ms])

    step = steps(mapped)
    step_detail = steps([m - _apply(mean, m) for m in mapped])
    a = reduce(np.square(step_detail))
    b = 2 * reduce(step * step_detail)
    c = reduce(np.square(step)) - reduce(np.square(steps(real)))
    disc = np.maximum(b * b - 4 * a * c, 0.0)
    return np.clip((-b + np.sqrt(disc)) / np.maximum(2 * a, 1e-12), 0.0, MAX_SHARPEN)


def calibrate_decoder(vae: AutoencoderKL, mel_cfg: MelConfig, manifest: Path, clips: int = 300) -> MelCalibration:
    """The calibration of ``vae``'s decoder on ``clips`` training clips of ``manifest`` (evenly spread)."""
    return _calibrate(vae, mel_cfg, _training_clips(manifest, clips))


def _training_clips(manifest: Path, clips: int) -> list:
    if clips < 1:
        raise ValueError(f"clips={clips}: the calibration needs at least one training clip (300 is the default)")
    train = evenly_spaced([c for c in read_corpus(manifest) if c.split == "train"], clips)
    if not train:
        raise ValueError(f"{manifest}: no clips in the train split to calibrate the decoder on")
    return train


def _calibrate(vae: AutoencoderKL, mel_cfg: MelConfig, train: list) -> MelCalibration:
    real, decoded = round_trip_mels(vae.eval(), mel_cfg, [c.audio for c in train])
    # As stored (rounded), so what the caller gets is what the graph will apply.
    return MelCalibration.from_dict(fit_calibration(real, decoded).to_dict())


def calibrate_pack(pack: str | Path, manifest: str | Path, clips: int = 300) -> MelCalibration:
    """Fit the calibration of a default-model pack's decoder on ``clips`` training clips of the corpus
    ``manifest`` and record it in its pack.json (replacing any earlier one); assemble it again to use it."""
    from reaudio.engine.bundle.dataclass_io import write_json_atomic
    from reaudio.engine.bundle.manifest import sha256_file
    from reaudio.export.default_pack import load_pack_models, verify_pack

    pack, manifest = Path(pack), Path(manifest)
    meta = verify_pack(pack)
    if not (pack / "vae_encoder.safetensors").is_file():
        raise ValueError(f"{pack}: this pack has no VAE encoder, which the calibration needs (a round trip)")
    train = _training_clips(manifest, clips)
    cfg, models = load_pack_models(pack)
    calibration = _calibrate(models["vae"], cfg.mel, train)
    record = {"train_clips": len(train), "manifest": manifest.name, "manifest_sha256": sha256_file(manifest)}
    meta["decoder_calibration"] = calibration.to_dict()
    meta["provenance"] = {**meta.get("provenance", {}), "decoder_calibration": record}
    write_json_atomic(pack / "pack.json", meta)
    return calibration
