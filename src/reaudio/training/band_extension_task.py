"""Training the band extension's envelope network on full-band clips.

Each training item is a clip's log-mel (from its 22.05-kHz copy, as the models see it) and the
log level of each 1-kHz band above 8 kHz in its full-band copy (at 44.1 kHz), frame by frame.
Clips whose source had no band there — kept only at 22.05 kHz, or resampled up from a lower rate
(a cliff in the spectrum at a common cut-off) — are never used as targets.

``decoded_by`` (a default-model pack or VAE checkpoint): half of the steps hear the clip's log-mel
through that VAE and the pack's decoder calibration instead, the mel the stage gets in the engine,
and still learn the real clip's band levels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reaudio.models.band_extension import BandExtension, BandExtensionConfig, BandLevels
from reaudio.models.configs import FamilyConfig
from reaudio.models.mel import LogMel

from .band_measures import COMMON_CUTOFFS_HZ, source_cutoff_hz
from .data import Clip, read_corpus, step_indices

log = logging.getLogger(__name__)


def band_extension_config(family: FamilyConfig, factor: int = 2) -> BandExtensionConfig:
    """The stage that fits ``family``'s mel: its rate, bands and hop, and its fmax as the top of the
    copied band, which is the octave under it (in whole multiples of the frames' overlap, 4)."""
    mel = family.mel
    hop = mel.hop_length  # two output frames per mel frame at factor 2
    n_fft = 4 * hop
    top_bin = int(round(mel.fmax * n_fft / (mel.sample_rate * factor)))
    return BandExtensionConfig(
        in_rate=mel.sample_rate,
        n_mels=mel.n_mels,
        mel_hop=mel.hop_length,
        factor=factor,
        n_fft=n_fft,
        hop=hop,
        source_hz=mel.fmax,
        shift_bins=top_bin // 2 // 4 * 4,
        crossover_hz=mel.fmax,
    )


class BandExtensionTask:
    """The ``band_extension`` deliverable: a :class:`BandExtension` whose envelope network learned
    full-band clips' band levels from their log-mels (L1 on log levels, random 64-frame windows)."""

    deliverables = ("band_extension",)
    progress = True
    window_frames = 64

    def __init__(self, family: FamilyConfig, manifest: str | Path, decoded_by: str | Path | None = None) -> None:
        self.family = family
        self.manifest = Path(manifest)
        self.clips = read_corpus(manifest)
        self.decoded_by = decoded_by
        self.cfg = band_extension_config(family)

    def setup(self, trainer) -> None:
        if trainer.world > 1:
            raise ValueError("train band-extension runs in one process (it trains in minutes on a CPU)")
        self.device = trainer.device
        self.model = BandExtension(self.cfg)
        self.mel = LogMel(self.family.mel)
        self.levels = BandLevels(self.cfg)
        self.decoder = None
        if self.decoded_by is not None:
            from .tasks import decoded_mel_chain

            self.decoder = decoded_mel_chain(self.family, self.decoded_by, torch.device("cpu"))
        level = trainer.cfg.loudness_db
        self.train = self._items([c for c in self.clips if c.split == "train"], level, "train")
        self.test = self._items([c for c in self.clips if c.split == "test"], level, "test")
        if not self.train:
            raise ValueError(f"{self.manifest}: no training clip has a full-band copy with a band above 8 kHz")
        targets = torch.cat([t for _, _, t in self.train])
        self.train_mean = targets.mean(0)
        with torch.no_grad():  # start at the mean level: the first steps learn shape, not offset
            self.model.envelope.out.bias.copy_(self.train_mean)

    @torch.no_grad()
    def _items(self, clips: list[Clip], loudness_db: float | None, split: str) -> list[tuple]:
        """(log-mel, decoded log-mel or None, band levels) per usable clip, frames aligned."""
        from reaudio.engine.audio.audio_io import load_audio

        from .loudness import normalise_loudness

        items, skipped = [], {"no full-band copy": 0, "resampled source": 0, "too short": 0}
        unit = self.family.samples_per_frame
        # A clip whose spectrum stops at a common cut-off, or at the corpus copy's own Nyquist frequency
        # (a source resampled up) would teach silence above its edge, where real sound has a band.
        cutoffs = sorted({self.cfg.in_rate / 2, *COMMON_CUTOFFS_HZ})
        for clip in clips:
            if clip.fullband is None:
                skipped["no full-band copy"] += 1
                continue
            full = load_audio(clip.fullband, self.cfg.out_rate)
            if source_cutoff_hz(full, self.cfg.out_rate, cutoffs) is not None:
                skipped["resampled source"] += 1
                continue
            wav = load_audio(clip.audio, self.cfg.in_rate)
            if loudness_db is not None:
                scaled = normalise_loudness(wav, self.cfg.in_rate, loudness_db)
                gain = float(np.abs(scaled).max() / max(np.abs(wav).max(), 1e-12)) if wav.size else 1.0
                wav, full = scaled, full * gain
            frames = min(len(wav) // self.cfg.mel_hop, len(full) // (self.cfg.mel_hop * self.cfg.factor))
            if frames < 8:
                skipped["too short"] += 1
                continue
            wav = wav[: frames * self.cfg.mel_hop]
            mel = self.mel(torch.from_numpy(np.ascontiguousarray(wav))[None])[0, :frames].float()
            target = self.levels(torch.from_numpy(np.ascontiguousarray(full[: frames * self.cfg.mel_hop * 2]))[None])[0]
            target = target[:frames]
            decoded = None
            if self.decoder is not None:
                padded = np.pad(wav, (0, -len(wav) % unit)).astype(np.float32)
                decoded = self.decoder(self.mel(torch.from_numpy(padded)[None]))[0, :frames].float()
            items.append((mel, decoded, target[: len(mel)]))
        log.info("band extension, %s split: %d clips used; left out %s", split, len(items), skipped)
        self.skipped = getattr(self, "skipped", {}) | {split: skipped}
        return items

    def trainable(self) -> dict[str, nn.Module]:
        return {"band_extension": self.model}

    def _window(self, item: tuple, rng: np.random.Generator, decoded: bool) -> tuple[torch.Tensor, ...]:
        mel, heard, target = item
        source = heard if (decoded and heard is not None) else mel
        frames, w = len(target), self.window_frames
        start = int(rng.integers(0, frames - w + 1)) if frames > w else 0
        source, target = source[start : start + w], target[start : start + w]
        mask = torch.ones(len(target))
        if len(target) < w:  # short clips: padded, and the padding is not scored
            pad = w - len(target)
            source = torch.cat([source, source[-1:].expand(pad, -1)])
            target = torch.cat([target, target[-1:].expand(pad, -1)])
            mask = torch.cat([mask, torch.zeros(pad)])
        return source, target, mask

    def train_step(self, trainer, step: int) -> dict[str, float]:
        cfg = trainer.cfg
        idx, rng = step_indices(len(self.train), cfg.batch_size, cfg.seed, step)
        decoded = rng.random(len(idx)) < 0.5
        rows = [self._window(self.train[int(i)], rng, bool(d)) for i, d in zip(idx, decoded)]
        mel, target, mask = (torch.stack(parts).to(self.device) for parts in zip(*rows))
        pred = self.model.envelope(mel)
        loss = ((pred - target).abs().mean(-1) * mask).sum() / mask.sum().clamp_min(1)
        trainer.optimise("band_extension", loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def _test_l1(self, envelope: nn.Module, decoded: bool) -> float | None:
        errors, weights = [], []
        for mel, heard, target in self.test:
            source = heard if decoded else mel
            if source is None:
                return None
            errors.append(float((envelope(source[None])[0] - target).abs().mean()))
            weights.append(len(target))
        return float(np.average(errors, weights=weights)) if errors else None

    def evaluate(self, trainer) -> dict:
        model = trainer.final_modules()["band_extension"].eval()
        mean_only = sum(float((t - self.train_mean).abs().mean()) * len(t) for _, _, t in self.test)
        frames = sum(len(t) for _, _, t in self.test)
        summary = {
            "clips": {"train": len(self.train), "test": len(self.test), "left_out": self.skipped},
            "test_level_l1": self._test_l1(model.envelope, False),
            "test_level_l1_decoded_mel": self._test_l1(model.envelope, True),
            "test_level_l1_train_mean": mean_only / frames if frames else None,
        }
        log.info("band extension, test log-level L1: %s", summary)
        return summary

    def finalize(self, trainer, folder: Path) -> None:
        self.family.save(folder / "family.json")
