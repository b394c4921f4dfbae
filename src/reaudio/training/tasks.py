"""What each model trains on: VAE, vocoder and the retrieval-conditioned LDM."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reaudio.engine.retrieval.database import RetrievalDB
from reaudio.models.checkpoint import load_checkpoint, save_checkpoint
from reaudio.models.configs import FamilyConfig
from reaudio.models.hifigan import (
    HiFiGANGenerator,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from reaudio.models.mel import LogMel
from reaudio.models.unet import UNet
from reaudio.models.vae import AutoencoderKL, MelPatchDiscriminator

from .data import ClipAudio, read_corpus, step_indices
from .diffusion import Diffusion

log = logging.getLogger(__name__)


def load_vocoder(spec: str | Path, family: FamilyConfig) -> nn.Module:
    """A vocoder checkpoint folder, or "universal" for the pretrained universal HiFi-GAN."""
    if str(spec) == "universal":
        from reaudio.models.pretrained import UNIVERSAL_HIFIGAN, universal_hifigan

        if family.vocoder != UNIVERSAL_HIFIGAN:
            raise ValueError(f"--vocoder universal needs the universal HiFi-GAN sizes; {family.name!r} differs")
        return universal_hifigan()
    return load_checkpoint(spec)


class Task:
    """Base: data of the train/test splits and the front end."""

    deliverables: tuple[str, ...] = ()
    progress = True

    def __init__(self, family: FamilyConfig, manifest: str | Path) -> None:
        self.family = family
        self.manifest = Path(manifest)
        self.clips = read_corpus(manifest)
        self.clip_samples = round(family.clip_seconds * family.mel.sample_rate)
        # Whole hops, so vocoder targets line up with mel frames.
        self.clip_samples -= self.clip_samples % family.mel.hop_length

    def setup(self, trainer) -> None:
        self.device = trainer.device
        sr, level = self.family.mel.sample_rate, trainer.cfg.loudness_db
        self.train = ClipAudio([c for c in self.clips if c.split == "train"], sr, self.clip_samples, level)
        test = [c for c in self.clips if c.split == "test"]
        self.test = ClipAudio(test, sr, self.clip_samples, level) if test else None
        self.mel = LogMel(self.family.mel).to(self.device)

    def batch_audio(self, data: ClipAudio, trainer, step: int) -> tuple[np.ndarray, torch.Tensor]:
        idx, rng = step_indices(len(data), trainer.cfg.batch_size, trainer.cfg.seed, step, trainer.rank, trainer.world)
        wav = np.stack([data.segment(int(i), rng) for i in idx])
        return idx, torch.from_numpy(wav).to(self.device)

    def test_batches(self, size: int = 8):
        if self.test is None:
            return
        rng = np.random.default_rng(1234)  # the same test segments every time
        for start in range(0, len(self.test), size):
            idx = range(start, min(start + size, len(self.test)))
            yield list(idx), torch.from_numpy(np.stack([self.test.segment(i, rng) for i in idx])).to(self.device)

    def evaluate(self, trainer) -> dict:
        return {}

    def finalize(self, trainer, folder: Path) -> None:
        self.family.save(folder / "family.json")


#: Which state-dict keys belong to each half of a VAE.
VAE_PARTS = {"encoder": ("encoder.",), "decoder": ("decoder.", "post_quant_conv.")}


def vae_part_state(source: str | Path, part: str) -> dict[str, torch.Tensor]:
    """The VAE ``part`` ("encoder" or "decoder") weights of a VAE checkpoint folder or of a
    default-model pack."""
    source = Path(source)
    if (source / "pack.json").is_file():
        from safetensors.torch import load_file

        from reaudio.export.default_pack import dequantize_state

        stored = source / f"vae_{part}.safetensors"
        if not stored.is_file():
            raise ValueError(f"{source}: this pack has no VAE {part} ({stored.name} missing)")
        return dequantize_state(load_file(str(stored)))
    vae = load_checkpoint(source)
    if not isinstance(vae, AutoencoderKL):
        raise ValueError(f"{source}: not a VAE checkpoint or a default-model pack")
    return {k: v for k, v in vae.state_dict().items() if k.startswith(VAE_PARTS[part])}


class VAETask(Task):
    """The VAE; or one half of it trained against the other half held fixed.

    ``frozen_decoder``: only the encoder trains, to feed that fixed decoder — an existing model
    gets an encoder without retraining its LDM (the decoder, and so the latent space the LDM was
    trained in, stay as they are). ``frozen_encoder``: only the decoder trains, starting from the
    source's decoder, on the latents of its fixed encoder — a better decoder for the same latent
    space, so the LDM trained in it needs no retraining either. ``adversarial_weight`` > 0 adds a
    patch discriminator on the log-mel (LSGAN and feature matching, that weight against the L1).
    """

    deliverables = ("vae",)

    def __init__(
        self,
        family: FamilyConfig,
        manifest: str | Path,
        frozen_decoder: str | Path | None = None,
        frozen_encoder: str | Path | None = None,
        adversarial_weight: float = 0.0,
    ) -> None:
        super().__init__(family, manifest)
        if frozen_decoder is not None and frozen_encoder is not None:
            raise ValueError("freeze the encoder or the decoder, not both (nothing would train)")
        self.frozen_decoder = frozen_decoder
        self.frozen_encoder = frozen_encoder
        self.adversarial_weight = adversarial_weight

    def setup(self, trainer) -> None:
        if trainer.cfg.segment_seconds > 0:
            hop = self.family.samples_per_frame
            samples = round(trainer.cfg.segment_seconds * self.family.mel.sample_rate)
            self.clip_samples = max(hop, samples // hop * hop)
        super().setup(trainer)
        self.vae = AutoencoderKL(self.family.vae)
        if self.adversarial_weight > 0:  # made here, after the trainer seeded torch
            self.discriminator = MelPatchDiscriminator()
        if self.frozen_decoder is not None:
            self._load_part(self.frozen_decoder, "decoder")
            self._freeze("decoder")
        if self.frozen_encoder is not None:
            self._load_part(self.frozen_encoder, "encoder")
            self._load_part(self.frozen_encoder, "decoder")  # the starting point, trained on from here
            self._freeze("encoder")

    def _load_part(self, source: str | Path, part: str) -> None:
        result = self.vae.load_state_dict(vae_part_state(source, part), strict=False)
        if result.unexpected_keys or any(k.startswith(VAE_PARTS[part]) for k in result.missing_keys):
            raise ValueError(
                f"{source}: {part} weights do not fit the config's VAE "
                f"(unexpected {result.unexpected_keys[:3]}, missing {result.missing_keys[:3]}; "
                "pass that model's family.json as --config)"
            )

    def _freeze(self, part: str) -> None:
        for name, param in self.vae.named_parameters():
            param.requires_grad_(not name.startswith(VAE_PARTS[part]))

    def trainable(self) -> dict[str, nn.Module]:
        if self.adversarial_weight > 0:
            return {"vae": self.vae, "discriminator": self.discriminator}
        return {"vae": self.vae}

    def train_step(self, trainer, step: int) -> dict[str, float]:
        _, wav = self.batch_audio(self.train, trainer, step)
        mel = self.mel(wav)
        recon, posterior = trainer.ddp["vae"](mel)
        rec = (recon - mel).abs().mean()
        kl = posterior.kl().mean() / mel[0].numel()
        loss = rec + trainer.cfg.kl_weight * kl * mel[0].numel()
        logged = {"loss_rec": rec.item(), "loss_kl": kl.item()}
        if self.adversarial_weight > 0:
            judge = trainer.ddp["discriminator"]
            d_loss = discriminator_loss(judge(mel), judge(recon.detach()))
            trainer.optimise("discriminator", d_loss)
            real_out, fake_out = judge(mel), judge(recon)
            adversarial = generator_adversarial_loss(fake_out) + feature_matching_loss(real_out, fake_out)
            loss = loss + self.adversarial_weight * adversarial
            logged |= {"loss_adv": adversarial.item(), "loss_d": d_loss.item()}
        trainer.optimise("vae", loss)
        return {"loss": loss.item(), **logged}

    @torch.no_grad()
    def evaluate(self, trainer) -> dict:
        model = trainer.final_modules()["vae"].to(self.device).eval()
        errors = [float((model(m := self.mel(w), sample=False)[0] - m).abs().mean()) for _, w in self.test_batches()]
        model.train()
        return {"test_mel_l1": float(np.mean(errors))} if errors else {}


class Discriminators(nn.Module):
    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(width=width)
        self.msd = MultiScaleDiscriminator(width=width)

    def forward(self, wav: torch.Tensor):
        return self.mpd(wav) + self.msd(wav)


class VocoderTask(Task):
    """HiFi-GAN on short random segments (8192 samples, as in Kong et al., 2020).

    ``decoded_by`` (a VAE checkpoint folder or a default-model pack): the generator hears what
    it will hear in the engine — each training clip's log-mel through that VAE's encoder and
    decoder (and a pack's decoder calibration) — and is judged against the real audio, as
    Kong et al. fine-tune on a text-to-mel model's ground-truth-aligned output. The clip's first
    ``clip_seconds`` are decoded whole, once, as the engine decodes a clip.
    ``train_stages``: only the last N up-sampling stages (with their residual blocks) and the
    output convolution train; the rest stays as loaded (a small set of weights to ship).
    """

    deliverables = ("vocoder",)
    segment_samples = 8192

    def __init__(
        self,
        family,
        manifest,
        init: str | Path | None = None,
        decoded_by: str | Path | None = None,
        train_stages: int | None = None,
    ) -> None:
        super().__init__(family, manifest)
        self.init = init
        self.decoded_by = decoded_by
        stages = len(family.vocoder.upsample_rates)
        if train_stages is not None and not 1 <= train_stages <= stages:
            raise ValueError(
                f"--train-stages {train_stages}: choose 1 to {stages} (this vocoder has {stages} up-sampling stages)"
            )
        if train_stages is not None and init is None:
            raise ValueError("--train-stages fine-tunes a trained vocoder: pass it with --vocoder (or universal)")
        self.train_stages = train_stages
        hop = family.mel.hop_length
        self.decode_samples = self.clip_samples  # the engine's clip length, whole hops
        self.clip_samples = max(hop, min(self.clip_samples, self.segment_samples // hop * hop))

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.generator = load_vocoder(self.init, self.family) if self.init else HiFiGANGenerator(self.family.vocoder)
        if self.train_stages is not None:
            self.generator.requires_grad_(False)
            for name in tail_parameter_names(self.generator, self.train_stages):
                self.generator.get_parameter(name).requires_grad_(True)
        self.decoder = (
            decoded_mel_chain(self.family, self.decoded_by, self.device) if self.decoded_by is not None else None
        )
        self._decoded: dict[int, tuple[np.ndarray, torch.Tensor]] = {}
        self.discriminators = Discriminators(trainer.cfg.discriminator_width)
        self.before = self._test_distance(self.generator.to(self.device))

    @torch.no_grad()
    def _decoded_clip(self, index: int) -> tuple[np.ndarray, torch.Tensor]:
        """The clip's first decode_samples (zero-padded to whole latent frames) and their decoded log-mel."""
        if index not in self._decoded:
            unit = self.family.samples_per_frame
            wav = self.train.audio[index][: self.decode_samples]
            length = max(-(-len(wav) // unit) * unit, -(-self.clip_samples // unit) * unit)
            wav = np.pad(wav, (0, length - len(wav))).astype(np.float32)
            mel = self.decoder(self.mel(torch.from_numpy(wav)[None].to(self.device)))[0]
            self._decoded[index] = (wav, mel)
        return self._decoded[index]

    def _training_batch(self, trainer, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(real audio, the mel the generator hears) for one step."""
        if self.decoder is None:
            _, wav = self.batch_audio(self.train, trainer, step)
            return wav, self.mel(wav)
        cfg = trainer.cfg
        idx, rng = step_indices(len(self.train), cfg.batch_size, cfg.seed, step, trainer.rank, trainer.world)
        hop, frames = self.family.mel.hop_length, self.clip_samples // self.family.mel.hop_length
        wavs, mels = [], []
        for i in idx:
            wav, mel = self._decoded_clip(int(i))
            start = int(rng.integers(0, mel.shape[0] - frames + 1))
            wavs.append(torch.from_numpy(wav[start * hop : start * hop + self.clip_samples]))
            mels.append(mel[start : start + frames])
        return torch.stack(wavs).to(self.device), torch.stack(mels)

    def trainable(self) -> dict[str, nn.Module]:
        return {"vocoder": self.generator, "discriminator": self.discriminators}

    def train_step(self, trainer, step: int) -> dict[str, float]:
        wav, heard = self._training_batch(trainer, step)
        fake = trainer.ddp["vocoder"](heard)
        d_loss = discriminator_loss(trainer.ddp["discriminator"](wav), trainer.ddp["discriminator"](fake.detach()))
        trainer.optimise("discriminator", d_loss)
        real_out, fake_out = trainer.ddp["discriminator"](wav), trainer.ddp["discriminator"](fake)
        mel_l1 = F.l1_loss(self.mel(fake), self.mel(wav))
        g_loss = generator_adversarial_loss(fake_out) + feature_matching_loss(real_out, fake_out) + 45 * mel_l1
        trainer.optimise("vocoder", g_loss)
        return {"loss": g_loss.item(), "loss_mel": mel_l1.item(), "loss_d": d_loss.item()}

    @torch.no_grad()
    def _test_distance(self, generator: nn.Module) -> float | None:
        """Mean log-mel L1 of the test segments re-synthesised from what the generator hears
        (with ``decoded_by``: each 8192-sample segment's own round trip)."""
        hear = self.decoder or nn.Identity()
        distances = [float(F.l1_loss(self.mel(generator(hear(m := self.mel(w)))), m)) for _, w in self.test_batches()]
        return float(np.mean(distances)) if distances else None

    def evaluate(self, trainer) -> dict:
        after = self._test_distance(trainer.final_modules()["vocoder"].to(self.device))
        return {"test_mel_l1_before": self.before, "test_mel_l1_after": after}


def decoded_mel_chain(family: FamilyConfig, source: str | Path, device) -> nn.Module:
    """Log-mel → what the engine's vocoder hears: the mel through ``source``'s VAE encoder and
    decoder (a VAE checkpoint folder or a default-model pack) and a pack's decoder calibration."""
    vae = AutoencoderKL(family.vae)
    for part in ("encoder", "decoder"):
        result = vae.load_state_dict(vae_part_state(source, part), strict=False)
        if result.unexpected_keys or any(k.startswith(VAE_PARTS[part]) for k in result.missing_keys):
            raise ValueError(f"{source}: its VAE {part} does not fit the config's VAE (pass its family.json)")
    chain = [_Reconstruct(vae)]
    if (Path(source) / "pack.json").is_file():
        from reaudio.export.default_pack import pack_calibration

        calibration = pack_calibration(Path(source), family.mel.n_mels)
        chain += [calibration] if calibration is not None else []
    return nn.Sequential(*chain).to(device).eval().requires_grad_(False)


class _Reconstruct(nn.Module):
    """A VAE's deterministic round trip (the posterior's mean), as the engine's encoder→decoder."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vae(mel, sample=False)[0]


def tail_parameter_names(generator: HiFiGANGenerator, stages: int) -> list[str]:
    """The parameters of a HiFi-GAN generator's last ``stages`` up-sampling stages (each
    transposed convolution with its residual blocks) and of its output convolution."""
    n_up, n_res = len(generator.ups), len(generator.cfg.resblock_kernel_sizes)
    kept = range(n_up - stages, n_up)

    def in_tail(name: str) -> bool:
        head, _, rest = name.partition(".")
        index = int(rest.split(".", 1)[0]) if head in ("ups", "resblocks") else None
        if head == "ups":
            return index in kept
        if head == "resblocks":
            return index // n_res in kept
        return head == "conv_post"

    return [name for name, _ in generator.named_parameters() if in_tail(name)]


def condition_keep_masks(batch: int, cfg, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which items keep their FiLM embedding and which their retrieved contexts (B,) bool each.

    With probability ``cfg_dropout`` both go (the unconditional model of classifier-free
    guidance); otherwise each goes alone with its own probability.
    """
    keep_all = torch.rand(batch, device=device) >= cfg.cfg_dropout
    keep_film = keep_all & (torch.rand(batch, device=device) >= cfg.film_dropout)
    keep_contexts = keep_all & (torch.rand(batch, device=device) >= cfg.context_dropout)
    return keep_film, keep_contexts


def each_context_keeps(keep_contexts: torch.Tensor, names, cfg, device) -> dict[str, torch.Tensor]:
    """Each retrieved context's own keep mask: with probability ``single_context_dropout`` a context
    goes while the others stay, so "neighbours' captions only" and "neighbours' audio only" are
    conditions the model has seen (the paper's retrieval-type ablation). At 0 no random numbers are
    drawn, so runs without it keep their old noise."""
    if cfg.single_context_dropout <= 0:
        return {name: keep_contexts for name in names}
    return {
        name: keep_contexts & (torch.rand(len(keep_contexts), device=device) >= cfg.single_context_dropout)
        for name in names
    }


class LDMTask(Task):
    """The retrieval-conditioned UNet on frozen VAE latents, CLAP text FiLM and retrieved contexts."""

    deliverables = ("unet",)

    def __init__(
        self,
        family,
        manifest,
        vae: str | Path,
        clap: str | Path,
        database: str | Path | None,
        vocoder: str | Path | None = None,
        unet: str | Path | None = None,
    ) -> None:
        super().__init__(family, manifest)
        self.paths = {"vae": vae, "clap": clap, "database": database, "vocoder": vocoder, "unet": unet}
        if family.retrieval.k > 0 and database is None:
            raise ValueError(f"config {family.name!r} retrieves k={family.retrieval.k} neighbours: pass --database")

    def setup(self, trainer) -> None:
        super().setup(trainer)
        self.vae = load_checkpoint(self.paths["vae"]).to(self.device).eval().requires_grad_(False)
        self.clap = load_checkpoint(self.paths["clap"]).to(self.device).eval().requires_grad_(False)
        self.unet = self._initial_unet(trainer)
        if self.paths["unet"] is not None:
            self._continue_from(self.paths["unet"])
        self.diffusion = Diffusion(self.family.schedule, self.device)
        self.scale = self.family.vae.scaling_factor
        if self.scale == 1.0:
            self.scale = self._estimate_scale(trainer)
            log.info("latent scaling factor estimated from data: %.5f", self.scale)
        trainer.resolved["latent_scaling_factor"] = self.scale
        self.db = RetrievalDB(self.paths["database"]) if self.paths["database"] else None

    def _initial_unet(self, trainer) -> UNet:
        # Seeded here, so the UNet starts the same whatever was loaded before it (a run from a
        # payload loads no VAE or CLAP and must draw what a run from the corpus draws).
        torch.manual_seed(trainer.cfg.seed)
        return UNet(self.family.unet)

    def _continue_from(self, folder: str | Path) -> None:
        """Start from a trained UNet (a resumed run's checkpoint still takes precedence)."""
        source = load_checkpoint(folder)
        if not isinstance(source, UNet):
            raise ValueError(f"{folder}: not a UNet checkpoint (e.g. `reaudio default-model unpack`'s unet/)")
        if source.cfg != self.family.unet:
            raise ValueError(
                f"{folder}: its UNet differs from the config's (pass the family.json it was trained with as --config)"
            )
        self.unet.load_state_dict(source.state_dict())

    # Computed on first use: a run resumed at its last step only writes final/ and needs neither.
    @functools.cached_property
    def posteriors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self._cache_posteriors()

    @functools.cached_property
    def _film_and_neighbours(self) -> tuple[torch.Tensor, np.ndarray]:
        return self._conditions(self.train.clips)

    @property
    def film(self) -> torch.Tensor:
        return self._film_and_neighbours[0]

    @property
    def neighbours(self) -> np.ndarray:
        return self._film_and_neighbours[1]

    @torch.no_grad()
    def _cache_posteriors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The VAE posterior (mean, std) of every training clip, encoded once, when every clip fits
        one training window: a step's crop is then the whole clip, and encoding it again at every
        step (a third of a CPU step) would redo the same work. None: clips are cropped at random."""
        hop = self.family.mel.hop_length
        if any(len(w) >= self.clip_samples + hop for w in self.train.audio):
            return None
        means, stds = [], []
        for start in range(0, len(self.train), 16):
            chunk = [w[: self.clip_samples] for w in self.train.audio[start : start + 16]]
            wav = np.stack([np.pad(w, (0, self.clip_samples - len(w))) for w in chunk])
            post = self.vae.encode(self.mel(torch.from_numpy(wav).to(self.device)))
            means.append(post.mean)
            stds.append(post.std)
        log.info("VAE posteriors of %d training clips cached (each fits one window)", len(self.train))
        return torch.cat(means), torch.cat(stds)

    def _latents(self, trainer, step: int) -> tuple[np.ndarray, torch.Tensor]:
        """Indices and scaled VAE latents z0 of one step's batch."""
        if self.posteriors is None:
            idx, wav = self.batch_audio(self.train, trainer, step)
            with torch.no_grad():
                return idx, self.vae.encode(self.mel(wav)).sample() * self.scale
        cfg = trainer.cfg
        idx, _ = step_indices(len(self.train), cfg.batch_size, cfg.seed, step, trainer.rank, trainer.world)
        sel = torch.from_numpy(idx).to(self.device)
        mean, std = self.posteriors[0][sel], self.posteriors[1][sel]
        return idx, (mean + std * torch.randn_like(mean)) * self.scale

    @torch.no_grad()
    def _estimate_scale(self, trainer) -> float:
        latents = [
            self.vae.encode(self.mel(self.batch_audio(self.train, trainer, 1_000_000_000 + i)[1])).mean
            for i in range(4)
        ]
        return float(1.0 / torch.cat(latents).std())

    @torch.no_grad()
    def _conditions(self, clips) -> tuple[torch.Tensor, np.ndarray]:
        chunks = []
        for start in range(0, len(clips), 256):
            ids, mask = self.clap.tokenizer([c.caption for c in clips[start : start + 256]])
            chunks.append(
                self.clap.embed_text(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device))
            )
        film = torch.cat(chunks)
        k = self.family.retrieval.k
        if k == 0:
            return film, np.zeros((len(clips), 0), np.int64)
        db = RetrievalDB(self.paths["database"])
        by_source: dict[str, set[int]] = {}
        for row, item in enumerate(db.items):
            by_source.setdefault(item.get("source", ""), set()).add(row)
        row_of = {item["id"]: row for row, item in enumerate(db.items)}
        exclude = [by_source.get(c.source, set()) | ({row_of[c.id]} if c.id in row_of else set()) for c in clips]
        return film, db.search(film.cpu().numpy(), k, exclude=exclude)

    def _contexts(self, rows: np.ndarray, keep: dict[str, torch.Tensor]) -> dict:
        if rows.shape[1] == 0:
            return {}
        found = self._neighbour_tokens(rows)
        out = {}
        for ctx in self.family.unet.contexts:
            tokens, mask = found[ctx.name]
            out[ctx.name] = (
                torch.from_numpy(tokens).to(self.device),
                torch.from_numpy(mask).to(self.device) & keep[ctx.name][:, None],
            )
        return out

    def _neighbour_tokens(self, rows: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each context's (tokens (B, k·L, D), mask (B, k·L)) for the database ``rows`` (B, k)."""
        nb = self.db.gather(rows)
        return {
            "retrieved_text": (nb.caption_tokens, nb.caption_mask),
            "retrieved_audio": (nb.audio_tokens, nb.audio_mask),
        }

    def trainable(self) -> dict[str, nn.Module]:
        return {"unet": self.unet}

    def train_step(self, trainer, step: int) -> dict[str, float]:
        idx, z0 = self._latents(trainer, step)
        b = len(idx)
        t = torch.randint(0, self.family.schedule.num_train_timesteps, (b,), device=self.device)
        noise = torch.randn_like(z0)
        zt = self.diffusion.q_sample(z0, t, noise)
        keep_film, keep_contexts = condition_keep_masks(b, trainer.cfg, self.device)
        film = self.film[torch.from_numpy(idx).to(self.device)] * keep_film[:, None]
        names = [ctx.name for ctx in self.family.unet.contexts]
        keeps = each_context_keeps(keep_contexts, names, trainer.cfg, self.device)
        contexts = self._contexts(self.neighbours[idx], keeps)
        # bf16 autocast on GPU; the loss is taken in fp32.
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = trainer.ddp["unet"](zt, t, film, contexts)
        per_item = (out.float() - self.diffusion.target(z0, t, noise)).pow(2).flatten(1).mean(1)
        loss = (per_item * self.diffusion.loss_weights(t, trainer.cfg.min_snr_gamma)).mean()
        trainer.optimise("unet", loss)
        return {"loss": loss.item()}

    def finalize(self, trainer, folder: Path) -> None:
        """Make ``final/`` a whole system folder that ``reaudio export`` takes as is."""
        from dataclasses import replace

        vae_cfg = replace(self.family.vae, scaling_factor=self.scale)
        vae = AutoencoderKL(vae_cfg)
        vae.load_state_dict(self.vae.state_dict())
        save_checkpoint(folder / "vae", vae.cpu())
        save_checkpoint(folder / "clap", self.clap.cpu())
        vocoder = load_vocoder(self.paths["vocoder"], self.family) if self.paths["vocoder"] else None
        if vocoder is not None:
            save_checkpoint(folder / "vocoder", vocoder)
        replace(self.family, vae=vae_cfg).save(folder / "family.json")
