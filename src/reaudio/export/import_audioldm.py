"""Import a diffusers-format AudioLDM pipeline folder into our model classes and a bundle.

Reads each component's ``config.json`` and weights directly (safetensors or a
torch ``.bin``); diffusers itself is not needed. Only configurations the
engine reproduces exactly are accepted: anything else fails naming the field.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from reaudio.engine.audio.frontend import AUDIOLDM_MEL, MelConfig
from reaudio.engine.bundle.manifest import BundleManifest
from reaudio.engine.denoising.schedule import NoiseScheduleConfig
from reaudio.models.clap import AudioTowerConfig, CLAPConfig
from reaudio.models.configs import FamilyConfig
from reaudio.models.hifigan import HiFiGANConfig, HiFiGANGenerator
from reaudio.models.key_maps import (
    convert_unet_state,
    convert_vae_state,
    convert_vocoder_state,
    load_state_strict,
)
from reaudio.models.retrieval_features import RetrievalConfig
from reaudio.models.text_tower import TextTowerConfig
from reaudio.models.unet import UNet, UNetConfig
from reaudio.models.vae import AutoencoderKL, VAEConfig

log = logging.getLogger(__name__)
#: Weight file stems, in the order they are looked for; each in full precision first,
#: then as the fp16 variant, as one file or as shards listed by an index.
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
VARIANTS = ("", "fp16")


class AudioLDMImportError(ValueError):
    """The folder is not a diffusers AudioLDM pipeline this engine reproduces; the message says why."""


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise AudioLDMImportError(f"{folder}: config.json missing (is this a diffusers AudioLDM pipeline folder?)")
    return json.loads(path.read_text(encoding="utf-8"))


def _variant_name(name: str, variant: str) -> str:
    """diffusers/transformers variant naming: ``a.safetensors`` → ``a.fp16.safetensors``,
    ``a.safetensors.index.json`` → ``a.safetensors.index.fp16.json``."""
    if not variant:
        return name
    stem, ext = name.rsplit(".", 1)
    return f"{stem}.{variant}.{ext}"


def weight_files(folder: Path) -> tuple[list[Path], str]:
    """The files holding one component's weights (one, or the shards an index lists) and their variant."""
    for variant in VARIANTS:
        for stem in WEIGHT_STEMS:
            for ext in ("safetensors", "bin"):
                single = folder / _variant_name(f"{stem}.{ext}", variant)
                if single.is_file():
                    return [single], variant
                index = folder / _variant_name(f"{stem}.{ext}.index.json", variant)
                if index.is_file():
                    shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
                    missing = [s for s in shards if not (folder / s).is_file()]
                    if missing:
                        raise AudioLDMImportError(f"{index}: shard(s) missing: {', '.join(missing)}")
                    return [folder / s for s in shards], variant
    names = [_variant_name(f"{s}.{e}", v) for v in VARIANTS for s in WEIGHT_STEMS[:1] for e in ("safetensors", "bin")]
    raise AudioLDMImportError(f"{folder}: no weights ({', '.join(names)}, or an *.index.json of shards)")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    """One component's weights in fp32 (fp16 variants are widened: the graphs are exported from fp32)."""
    files, variant = weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            state.update(torch.load(str(path), map_location="cpu", weights_only=True))
    if variant:
        log.info("%s: %s weights (%d file(s)), widened to fp32", folder.name, variant, len(files))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _require(cfg: dict, key: str, expected, where: str) -> None:
    value = cfg.get(key, expected)
    if value != expected:
        raise AudioLDMImportError(f"{where}: {key}={value!r} is not supported (expected {expected!r})")


# -- UNet ---------------------------------------------------------------------------------


def unet_config(cfg: dict, where: str = "unet/config.json") -> UNetConfig:
    channels = list(cfg["block_out_channels"])
    mc = channels[0]
    if any(c % mc for c in channels):
        raise AudioLDMImportError(f"{where}: block_out_channels {channels} are not multiples of the first")
    down, up = list(cfg["down_block_types"]), list(cfg["up_block_types"])
    attn_levels = [t == "CrossAttnDownBlock2D" for t in down]
    if [t == "CrossAttnUpBlock2D" for t in reversed(up)] != attn_levels:
        raise AudioLDMImportError(f"{where}: up_block_types {up} do not mirror down_block_types {down}")
    for t in down + up:
        if t not in ("DownBlock2D", "CrossAttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"):
            raise AudioLDMImportError(f"{where}: block type {t!r} is not supported")
    for key, expected in (
        ("class_embed_type", "simple_projection"),
        ("class_embeddings_concat", True),
        ("use_linear_projection", False),
        ("flip_sin_to_cos", True),
        ("freq_shift", 0),
        ("act_fn", "silu"),
        ("norm_eps", 1e-5),
        ("time_embedding_type", "positional"),
        ("transformer_layers_per_block", 1),
        ("resnet_time_scale_shift", "default"),
        ("only_cross_attention", False),
        ("dual_cross_attention", False),
        ("mid_block_type", "UNetMidBlock2DCrossAttn"),
        ("encoder_hid_dim", None),
        ("addition_embed_type", None),
        ("time_cond_proj_dim", None),
        ("conv_in_kernel", 3),
        ("conv_out_kernel", 3),
    ):
        _require(cfg, key, expected, where)
    cross = cfg.get("cross_attention_dim")
    cross = list(cross) if isinstance(cross, (list, tuple)) else [cross] * len(channels)
    if cross != channels:
        raise AudioLDMImportError(
            f"{where}: cross_attention_dim {cross} must equal block_out_channels {channels} "
            f"(AudioLDM's second attention attends to the features themselves)"
        )
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * len(channels)
    return UNetConfig(
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        model_channels=mc,
        channel_mult=tuple(c // mc for c in channels),
        num_res_blocks=cfg["layers_per_block"],
        attention_resolutions=tuple(2**i for i, a in enumerate(attn_levels) if a),
        num_head_channels=channels[0] // heads[0],
        film_dim=cfg["projection_class_embeddings_input_dim"],
        contexts=(),
        extra_self_attention=True,
        norm_groups=cfg.get("norm_num_groups", 32),
        num_heads=heads,
    )


def vae_config(cfg: dict, where: str = "vae/config.json") -> VAEConfig:
    channels = list(cfg["block_out_channels"])
    for key, expected in (
        ("act_fn", "silu"),
        ("mid_block_add_attention", True),
        ("use_quant_conv", True),
        ("use_post_quant_conv", True),
        ("force_upcast", cfg.get("force_upcast", True)),
    ):
        _require(cfg, key, expected, where)
    if any(c % channels[0] for c in channels):
        raise AudioLDMImportError(f"{where}: block_out_channels {channels} are not multiples of the first")
    if cfg.get("in_channels", 1) != 1 or cfg.get("out_channels", 1) != 1:
        raise AudioLDMImportError(f"{where}: AudioLDM's VAE has one input and output channel (a mel image)")
    return VAEConfig(
        in_channels=1,
        ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels),
        num_res_blocks=cfg["layers_per_block"],
        z_channels=cfg["latent_channels"],
        embed_dim=cfg["latent_channels"],
        scaling_factor=float(cfg.get("scaling_factor", 1.0)),
        norm_groups=cfg.get("norm_num_groups", 32),
    )


def vocoder_config(cfg: dict, where: str = "vocoder/config.json") -> HiFiGANConfig:
    _require(cfg, "normalize_before", False, where)
    _require(cfg, "leaky_relu_slope", 0.1, where)
    return HiFiGANConfig(
        n_mels=cfg["model_in_dim"],
        upsample_initial_channel=cfg["upsample_initial_channel"],
        upsample_rates=tuple(cfg["upsample_rates"]),
        upsample_kernel_sizes=tuple(cfg["upsample_kernel_sizes"]),
        resblock_kernel_sizes=tuple(cfg["resblock_kernel_sizes"]),
        resblock_dilations=tuple(tuple(d) for d in cfg["resblock_dilation_sizes"]),
    )


def schedule_config(cfg: dict, where: str = "scheduler/scheduler_config.json") -> NoiseScheduleConfig:
    """The engine's sampler math equals diffusers' DDIM with these settings (AudioLDM's)."""
    for key, expected in (
        ("prediction_type", "epsilon"),
        ("steps_offset", 1),
        ("set_alpha_to_one", False),
        ("timestep_spacing", "leading"),
        ("thresholding", False),
        ("clip_sample", False),
        ("rescale_betas_zero_snr", False),
        ("trained_betas", None),
    ):
        _require(cfg, key, expected, where)
    if cfg.get("beta_schedule") not in ("scaled_linear", "linear"):
        raise AudioLDMImportError(
            f"{where}: beta_schedule={cfg.get('beta_schedule')!r}; supported: scaled_linear, linear"
        )
    return NoiseScheduleConfig(
        num_train_timesteps=cfg.get("num_train_timesteps", 1000),
        beta_start=cfg["beta_start"],
        beta_end=cfg["beta_end"],
        beta_schedule=cfg["beta_schedule"],
    )


# -- the whole pipeline -------------------------------------------------------------------


def mel_for(vocoder: HiFiGANConfig, sample_rate: int) -> MelConfig:
    """AudioLDM's front end when the vocoder matches it; otherwise a consistent stand-in.

    Imported models never compute mels at run time (no audio encoder); the engine
    uses only the rate, hop and band count.
    """
    hop = vocoder.hop_length
    if (sample_rate, hop, vocoder.n_mels) == (AUDIOLDM_MEL.sample_rate, AUDIOLDM_MEL.hop_length, AUDIOLDM_MEL.n_mels):
        return AUDIOLDM_MEL
    n_fft = 4 * hop
    return MelConfig(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop,
        win_length=n_fft,
        n_mels=vocoder.n_mels,
        fmin=0.0,
        fmax=sample_rate / 2,
    )


def load_audioldm(folder: str | Path) -> tuple[FamilyConfig, dict, object]:
    """(family config, models incl. the HF text encoder, the HF fast tokenizer) from a pipeline folder."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise AudioLDMImportError(f"{folder}: model_index.json missing; expected a diffusers AudioLDM pipeline folder")
    pipeline_class = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    if pipeline_class != "AudioLDMPipeline":
        raise AudioLDMImportError(f"{index}: _class_name={pipeline_class!r}; only AudioLDMPipeline is supported")

    ucfg = unet_config(_config(folder / "unet"))
    vcfg = vae_config(_config(folder / "vae"))
    voc_raw = _config(folder / "vocoder")
    hcfg = vocoder_config(voc_raw)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    schedule = schedule_config(json.loads(sched_path.read_text(encoding="utf-8")))

    unet = UNet(ucfg)
    load_state_strict(unet, convert_unet_state(_weights(folder / "unet"), ucfg), str(folder / "unet"))
    vae = AutoencoderKL(vcfg)
    load_state_strict(vae, convert_vae_state(_weights(folder / "vae"), vcfg), str(folder / "vae"))
    vocoder = HiFiGANGenerator(hcfg)
    vocoder.remove_weight_norm()
    load_state_strict(vocoder, convert_vocoder_state(_weights(folder / "vocoder")), str(folder / "vocoder"))

    from transformers import AutoTokenizer, ClapTextModelWithProjection

    _, text_variant = weight_files(folder / "text_encoder")
    text = (
        ClapTextModelWithProjection.from_pretrained(
            str(folder / "text_encoder"), local_files_only=True, variant=text_variant or None
        )
        .float()
        .eval()
    )
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True, use_fast=True)
    max_length = min(int(tokenizer.model_max_length), text.config.max_position_embeddings - 2)

    sample_rate = voc_raw.get("sampling_rate", 16000)
    mel = mel_for(hcfg, sample_rate)
    r = vcfg.downsample_factor
    sample_size = _config(folder / "unet").get("sample_size", 256)
    frames = sample_size if isinstance(sample_size, int) else sample_size[0]
    family = FamilyConfig(
        name=f"audioldm-import:{folder.name}",
        clip_seconds=frames * r * mel.hop_length / sample_rate,
        mel=mel,
        vae=vcfg,
        vocoder=hcfg,
        unet=ucfg,
        clap=CLAPConfig(
            text=TextTowerConfig(pretrained=None, hidden_size=text.config.hidden_size, max_length=max_length),
            audio=AudioTowerConfig(n_mels=mel.n_mels),
            embed_dim=text.config.projection_dim,
        ),
        retrieval=RetrievalConfig(k=0, contexts=()),
        schedule=schedule,
    )
    return family, {"unet": unet, "vae": vae, "vocoder": vocoder, "text_encoder": text}, tokenizer


def import_audioldm(
    source: str | Path,
    out: str | Path,
    *,
    fp16: bool = False,
    overwrite: bool = False,
    licence: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    optimize: str | None = None,
) -> BundleManifest:
    """Convert the pipeline in ``source`` (a folder, or a hub id in the local cache) into a bundle at ``out``.

    The bundle (k = 0, AudioLDM family) records the weights' licence: ``licence`` if
    given, else the model card's, else "unknown".
    """
    from .bundle import export_bundle
    from .hub_cache import model_licence, resolve_model

    folder = resolve_model(source, revision, cache_dir)
    model = str(source) if not Path(source).exists() else Path(source).resolve().name
    terms = model_licence(folder, model, licence)
    log.info("%s", terms.notice())
    family, models, tokenizer = load_audioldm(folder)
    return export_bundle(
        family,
        models,
        out,
        fp16=fp16,
        optimize=optimize,
        overwrite=overwrite,
        tokenizer_json=tokenizer.backend_tokenizer.to_str(),
        null_condition="empty_prompt",
        family_name="audioldm",
        licence=terms,
    )
