"""What training the LDM reads, precomputed into one file, so the UNet can train elsewhere.

Everything but the UNet is frozen while the LDM trains, so a step needs only each training
clip's VAE posterior, its prompt's FiLM embedding and the features of its retrieved
neighbours. ``write_ldm_payload`` computes those once (where the corpus, the VAE, the CLAP and
the database are); ``PayloadLDMTask`` trains the UNet from the file alone: no audio, VAE, CLAP,
tokenizer or database, and nothing imported beyond torch, numpy and safetensors — a run on a
rented GPU carries the repository and this file. A run from an fp32 payload draws exactly what
the run from the corpus draws, so the two give the same weights (fp16: features in fp16,
posteriors in fixed steps well below their own noise).

Caption tokens are stored ragged (each neighbour caption's real tokens only): padded they are
most of the file, and a masked token never reaches the UNet's output.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from reaudio.engine.bundle.dataclass_io import atomic_path
from reaudio.models.configs import FamilyConfig

from .diffusion import Diffusion
from .tasks import LDMTask

log = logging.getLogger(__name__)

PAYLOAD_FORMAT = 1
PRECISIONS = {"fp16": np.float16, "fp32": np.float32}


def write_ldm_payload(task, trainer, out: str | Path, precision: str = "fp16") -> dict:
    """Write ``task``'s (an LDMTask, set up by ``trainer``) training inputs to ``out`` (.npz); returns its meta."""
    if precision not in PRECISIONS:
        raise ValueError(f"payload precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    posteriors = task.posteriors
    if posteriors is None:
        raise ValueError(
            f"{task.manifest}: some training clips are longer than one {task.family.clip_seconds:g}-s window, so "
            "each step crops and encodes them afresh; a payload holds one encoding per clip. Train from the corpus."
        )
    neighbours = task.neighbours
    used = np.unique(neighbours[neighbours >= 0]) if neighbours.size else np.zeros(0, np.int64)
    arrays = {
        **_stored_posteriors(posteriors[0].cpu().numpy(), posteriors[1].cpu().numpy(), precision),
        "film": task.film.cpu().numpy().astype(dtype),
        # Rows into the stored neighbour features; database_rows maps them back to the database.
        "neighbours": np.searchsorted(used, neighbours).astype(np.int32),
        "database_rows": used.astype(np.int32),
    }
    if used.size:
        arrays.update(_neighbour_features(task.db.gather(used[:, None]), dtype))
    meta = {
        "format": PAYLOAD_FORMAT,
        "family": task.family.to_dict(),
        "scaling_factor": task.scale,
        "precision": precision,
        "clips": [c.id for c in task.train.clips],
        "manifest": str(task.manifest),
        "loudness_db": trainer.cfg.loudness_db,
        "inputs": {k: str(v) for k, v in task.paths.items() if v is not None and k in ("vae", "clap", "database")},
    }
    out = Path(out)
    with atomic_path(out, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
    log.info("%s: %d clips, %d neighbour items, %.1f MiB", out, len(task.train), used.size, out.stat().st_size / 2**20)
    return meta


LATENT_STEP = 1 / 256  # the fp16 payload's step for posterior means (default model: error < 0.2 of its smallest std)
LOG_STD_LEVELS = 63  # 6 bits: the std within ±4 %


def _stored_posteriors(mean: np.ndarray, std: np.ndarray, precision: str) -> dict[str, np.ndarray]:
    """The posteriors exactly (fp32), or in fixed steps (fp16 payloads).

    A step samples mean + std · noise, so errors well below the std are below the noise it adds
    anyway; in fixed steps the two arrays compress to about half of what fp16 does, which is what
    keeps the default model's payload under 60 MB."""
    if precision == "fp32":
        return {"latent_mean": mean.astype(np.float32), "latent_std": std.astype(np.float32)}
    step = max(LATENT_STEP, float(np.abs(mean).max()) / 32000)
    log_std = np.log(np.maximum(std, 1e-12))
    low, high = float(log_std.min()), float(log_std.max())
    std_step = (high - low) / LOG_STD_LEVELS or 1.0
    return {
        "latent_mean_i16": np.round(mean / step).astype(np.int16),
        "latent_mean_step": np.float32(step),
        "latent_log_std_u8": np.round((log_std - low) / std_step).astype(np.uint8),
        "latent_log_std_range": np.array([low, std_step], np.float32),
    }


def latent_posteriors(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A payload's posterior (mean, std), however it was stored."""
    if "latent_std" in arrays:
        return arrays["latent_mean"], arrays["latent_std"]
    mean = arrays["latent_mean_i16"].astype(np.float32) * arrays["latent_mean_step"]
    low, step = arrays["latent_log_std_range"]
    return mean, np.exp(low + step * arrays["latent_log_std_u8"].astype(np.float32))


def _neighbour_features(nb, dtype) -> dict[str, np.ndarray]:
    lengths = nb.caption_mask.sum(axis=1)
    if not all(mask[:n].all() for mask, n in zip(nb.caption_mask, lengths)):
        raise ValueError("caption masks are not a run of real tokens followed by padding; cannot store them ragged")
    return {
        "caption_tokens": np.concatenate([t[:n] for t, n in zip(nb.caption_tokens, lengths)]).astype(dtype),
        "caption_lengths": lengths.astype(np.int32),
        "caption_width": np.int32(nb.caption_tokens.shape[1]),
        "audio_tokens": nb.audio_tokens.astype(dtype),
        "audio_mask": nb.audio_mask,
    }


def read_ldm_payload(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) of a payload file, with a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such payload (write one with `reaudio train ldm ... --payload-out FILE`)")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("meta").tobytes())
    except (ValueError, KeyError, OSError) as e:
        raise ValueError(f"{path}: not an LDM payload ({e})") from e
    if meta.get("format") != PAYLOAD_FORMAT:
        raise ValueError(f"{path}: payload format {meta.get('format')}; this reaudio reads {PAYLOAD_FORMAT}")
    return meta, arrays


def check_family_fits(family: FamilyConfig, payload_family: FamilyConfig, path: Path) -> None:
    """The UNet may differ from the payload's (a larger one, say), its inputs may not."""
    problems = family.unet.input_differences(payload_family.unet)
    if family.retrieval.k != payload_family.retrieval.k:
        problems.append(f"k={family.retrieval.k} vs k={payload_family.retrieval.k}")
    if problems:
        raise ValueError(
            f"{path}: the config's UNet does not take this payload's inputs ({'; '.join(problems)}, the config's first)"
        )


class PayloadLDMTask(LDMTask):
    """The LDM's training step, fed from a payload file instead of the corpus and frozen models."""

    def __init__(self, family: FamilyConfig | None, payload: str | Path, unet: str | Path | None = None) -> None:
        self.payload_path = Path(payload)
        self.meta, self.arrays = read_ldm_payload(self.payload_path)
        stored = FamilyConfig.from_dict(self.meta["family"])
        if family is None:
            family = stored
        check_family_fits(family, stored, self.payload_path)
        self.family = replace(family, vae=replace(family.vae, scaling_factor=self.meta["scaling_factor"]))
        self.manifest = self.payload_path
        self.paths = {"vae": None, "clap": None, "database": None, "vocoder": None, "unet": unet}

    def setup(self, trainer) -> None:
        self.device = trainer.device
        stored = self.meta["loudness_db"]
        if trainer.cfg.loudness_db not in (None, stored):
            level = "their own levels" if stored is None else f"{stored:g} LUFS"
            log.warning(
                "--loudness-db %g: the payload's clips were encoded at %s; the payload's level is what trains",
                trainer.cfg.loudness_db,
                level,
            )
        self.unet = self._initial_unet(trainer)
        if self.paths["unet"] is not None:
            self._continue_from(self.paths["unet"])
        self.diffusion = Diffusion(self.family.schedule, self.device)
        self.scale = float(self.meta["scaling_factor"])
        trainer.resolved["latent_scaling_factor"] = self.scale
        trainer.resolved["payload"] = {k: self.meta[k] for k in ("manifest", "precision", "loudness_db", "inputs")}
        self.train = range(len(self.meta["clips"]))
        a = self.arrays
        as_tensor = lambda x: torch.from_numpy(np.asarray(x, np.float32)).to(self.device)  # noqa: E731
        self.posteriors = tuple(as_tensor(x) for x in latent_posteriors(a))
        self._film_and_neighbours = (as_tensor(a["film"]), a["neighbours"].astype(np.int64))
        self._features = self._padded_features() if "audio_tokens" in a else None

    def _padded_features(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        a = self.arrays
        lengths, width = a["caption_lengths"], int(a["caption_width"])
        tokens = np.zeros((len(lengths), width, a["caption_tokens"].shape[1]), np.float32)
        mask = np.arange(width)[None, :] < lengths[:, None]
        tokens[mask] = a["caption_tokens"]
        return {
            "retrieved_text": (tokens, mask),
            "retrieved_audio": (a["audio_tokens"].astype(np.float32), a["audio_mask"]),
        }

    def _neighbour_tokens(self, rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        b, k = rows.shape
        out = {}
        for name, (tokens, mask) in self._features.items():
            out[name] = (tokens[rows].reshape(b, k * tokens.shape[1], -1), mask[rows].reshape(b, k * mask.shape[1]))
        return out

    def evaluate(self, trainer) -> dict:
        return {}

    def finalize(self, trainer, folder: Path) -> None:
        """final/ holds the UNet and its family.json; `reaudio default-model add-unet` puts it in a pack."""
        self.family.save(folder / "family.json")
