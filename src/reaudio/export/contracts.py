"""Each exportable stage's I/O contract, stated once.

Export, parity checks, TensorRT profiles and the bundle manifest all read these;
nothing restates them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from reaudio.engine.bundle.manifest import AudioFrontend, StageSpec, TensorSpec
from reaudio.models.configs import FamilyConfig
from reaudio.models.laion_clap import LaionCLAPConfig

from .graphs import (
    AudioEncoderGraph,
    DecoderGraph,
    DenoiserStepGraph,
    HFClapTextGraph,
    TextEncoderGraph,
    VAEEncoderGraph,
)

STAGES = ("text_encoder", "denoiser", "decoder", "audio_encoder", "vae_encoder")


@dataclass(frozen=True)
class Limits:
    """Range of each dynamic axis: (min, opt, max) — for sample inputs and TensorRT profiles.

    Attributes:
        batch: prompts per batch.
        latent_frames: latent frames (T of the latent).
        text_tokens: prompt tokens.
        neighbours: retrieved neighbours k.
    """

    batch: tuple[int, int, int] = (1, 4, 8)
    latent_frames: tuple[int, int, int] = (16, 128, 256)
    text_tokens: tuple[int, int, int] = (2, 16, 64)
    neighbours: tuple[int, int, int] = (1, 3, 10)


@dataclass(frozen=True)
class StageContract:
    """Names, dtypes and shapes of one stage; dims given as strings are dynamic axes."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            for spec in (*self.inputs, *self.outputs)
        }

    def spec(self, file: str, fp16_file: str | None = None, fused_file: str | None = None) -> StageSpec:
        return StageSpec(
            file=file, inputs=self.inputs, outputs=self.outputs, fp16_file=fp16_file, fused_file=fused_file
        )

    def dims(self, cfg: FamilyConfig, limits: Limits, which: int) -> dict[str, int]:
        """Values of the dynamic axes at min (0), opt (1) or max (2) of ``limits``."""
        frames = limits.latent_frames[which]
        k = limits.neighbours[which]
        return {
            "batch": limits.batch[which],
            "frames": frames,
            "text_tokens": limits.text_tokens[which],
            "mel_frames": frames * cfg.vae.downsample_factor,
            "samples": frames * cfg.samples_per_frame,
            "text_context": k * cfg.retrieval.caption_tokens,
            "audio_context": k * cfg.retrieval.audio_tokens,
        }

    def shapes(self, cfg: FamilyConfig, limits: Limits, which: int) -> dict[str, tuple[int, ...]]:
        dims = self.dims(cfg, limits, which)
        return {s.name: tuple(dims[d] if isinstance(d, str) else d for d in s.shape) for s in self.inputs}

    def trt_profile(self, cfg: FamilyConfig, limits: Limits) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT optimisation profile: input name → (min, opt, max) shape."""
        per = [self.shapes(cfg, limits, i) for i in range(3)]
        return {s.name: (per[0][s.name], per[1][s.name], per[2][s.name]) for s in self.inputs}

    def sample_inputs(
        self, cfg: FamilyConfig, batch: int, frames: int, tokens: int = 12, k: int | None = None, seed: int = 0
    ) -> tuple[torch.Tensor, ...]:
        """Random inputs in the stage's order, valid for its graph."""
        k = cfg.retrieval.k if k is None else k
        limits = Limits(batch=(batch,) * 3, latent_frames=(frames,) * 3, text_tokens=(tokens,) * 3, neighbours=(k,) * 3)
        shapes = self.shapes(cfg, limits, 0)
        g = torch.Generator().manual_seed(seed)
        out = []
        for spec in self.inputs:
            shape = shapes[spec.name]
            if spec.name == "input_ids":
                vocab = 60
                out.append(torch.randint(4, vocab, shape, generator=g))
            elif spec.name == "attention_mask":
                mask = torch.ones(shape, dtype=torch.int64)
                mask[0, shape[1] // 2 :] = 0  # one padded prompt
                out.append(mask)
            elif spec.name == "timestep":
                out.append(torch.randint(1, cfg.schedule.num_train_timesteps, shape, generator=g))
            elif spec.name == "guidance":
                out.append(torch.full(shape, 2.5))
            elif spec.name == "coefs":
                from reaudio.engine.denoising.sampler import make_plan

                plan = make_plan(cfg.schedule, "dpmpp-2m", 10)
                out.append(torch.from_numpy(plan.coefs[3]).float().expand(shape).contiguous())
            elif spec.name in ("film", "uncond_film"):
                out.append(torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1))
            elif spec.dtype == "bool":
                mask = torch.ones(shape, dtype=torch.bool)
                mask[0, shape[1] // 2 :] = False
                out.append(mask)
            else:
                out.append(torch.randn(shape, generator=g))
        return tuple(out)


def _f(name: str, *shape: int | str) -> TensorSpec:
    return TensorSpec(name, "float32", tuple(shape))


def audio_frontend(cfg: FamilyConfig) -> AudioFrontend | None:
    """The audio encoder's own front end: LAION-CLAP's; None when it is the family's mel (our CLAP)."""
    return cfg.clap.audio.frontend() if isinstance(cfg.clap, LaionCLAPConfig) else None


def contract(stage: str, cfg: FamilyConfig) -> StageContract:
    """The contract of ``stage`` for models of ``cfg``."""
    c, _, f = cfg.latent_shape(cfg.vae.downsample_factor)
    if stage == "text_encoder":
        return StageContract(
            stage,
            (
                TensorSpec("input_ids", "int64", ("batch", "text_tokens")),
                TensorSpec("attention_mask", "int64", ("batch", "text_tokens")),
            ),
            (
                _f("text_embedding", "batch", cfg.clap.embed_dim),
                _f("token_features", "batch", "text_tokens", cfg.clap.text.hidden_size),
            ),
        )
    if stage == "denoiser":
        if not cfg.unet.film_dim:
            raise ValueError("export needs a UNet with a FiLM condition (film_dim > 0)")
        latent = ("batch", c, "frames", f)
        inputs = [
            _f("latent", *latent),
            TensorSpec("timestep", "int64", ("batch",)),
            _f("film", "batch", cfg.unet.film_dim),
            _f("uncond_film", "batch", cfg.unet.film_dim),
            _f("guidance", "batch"),
            _f("coefs", "batch", 5),
            _f("prev_x0", *latent),
        ]
        for ctx in cfg.unet.contexts:
            axis = "text_context" if ctx.name == "retrieved_text" else "audio_context"
            inputs += [_f(ctx.name, "batch", axis, ctx.dim), TensorSpec(f"{ctx.name}_mask", "bool", ("batch", axis))]
        return StageContract(stage, tuple(inputs), (_f("next_latent", *latent), _f("x0", *latent)))
    if stage == "decoder":
        return StageContract(stage, (_f("latent", "batch", c, "frames", f),), (_f("waveform", "batch", "samples"),))
    if stage == "audio_encoder":
        # LAION-CLAP sees fixed windows through its own front end; ours any length of the family's mel.
        front = audio_frontend(cfg)
        mel = ("batch", "mel_frames", cfg.mel.n_mels)
        if front is not None:
            samples = round(front.window_seconds * front.mel.sample_rate)
            mel = ("batch", front.mel.num_frames(samples), front.mel.n_mels)
        return StageContract(
            stage,
            (_f("mel", *mel),),
            (
                _f("audio_embedding", "batch", cfg.clap.embed_dim),
                _f("audio_tokens", "batch", cfg.retrieval.audio_tokens, cfg.clap.audio.width),
            ),
        )
    if stage == "vae_encoder":
        return StageContract(
            stage, (_f("mel", "batch", "mel_frames", cfg.mel.n_mels),), (_f("latent", "batch", c, "frames", f),)
        )
    raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")


def stages_for(models: dict[str, nn.Module]) -> tuple[str, ...]:
    """The stages these models provide: no ``audio_encoder`` without our CLAP (imported AudioLDM), no
    ``vae_encoder`` for a VAE whose encoder is not there (a default-model pack that ships only the decoder)."""
    present = {"audio_encoder": "clap" in models, "vae_encoder": getattr(models["vae"], "encoder", None) is not None}
    return tuple(s for s in STAGES if present.get(s, True))


def stage_module(stage: str, cfg: FamilyConfig, models: dict[str, nn.Module]) -> nn.Module:
    """The torch module computing ``stage`` from the loaded ``models`` (vae, vocoder, unet, clap; optionally
    the decoder's mel_calibration, mel_matching and band_extension, and the denoiser's guidance_rescale)."""
    if stage == "text_encoder":
        if "clap" in models:
            return TextEncoderGraph(models["clap"])
        return HFClapTextGraph(models["text_encoder"])
    if stage == "denoiser":
        return DenoiserStepGraph(models["unet"], cfg.schedule.prediction_type, models.get("guidance_rescale"))
    if stage == "decoder":
        return DecoderGraph(
            models["vae"],
            models["vocoder"],
            cfg.mel.n_mels,
            models.get("mel_calibration"),
            models.get("band_extension"),
            models.get("mel_matching"),
        )
    if stage == "audio_encoder":
        return AudioEncoderGraph(models["clap"], cfg.retrieval.audio_tokens)
    if stage == "vae_encoder":
        return VAEEncoderGraph(models["vae"])
    raise ValueError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
