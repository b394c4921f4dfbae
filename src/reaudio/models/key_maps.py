"""Other projects' parameter names → ours, and strict loading that names every mismatch.

AudioLDM in diffusers' layout (UNet, VAE, HiFi-GAN vocoder) and LAION-CLAP (HTSAT +
RoBERTa) checkpoints are renamed here, key by key; unknown keys raise, naming them.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .unet import UNetConfig
from .vae import VAEConfig


class CheckpointError(ValueError):
    """A checkpoint folder is missing a file or disagrees with its config."""


class LaionCheckpointError(ValueError):
    """The checkpoint is not a supported LAION-CLAP layout; the message names the keys."""


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``model``, naming every missing, unexpected or mis-shaped key."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if state[k].shape != own[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:10]) + (f", … ({len(items)} in all)" if len(items) > 10 else "")
                parts.append(f"{label}: {shown}")
        raise CheckpointError(f"{source} does not match the model config: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


# -- AudioLDM (diffusers layout) --------------------------------------------------

_TRANSFORMER = [
    (r"transformer_blocks\.(\d+)\.attn2\.", r"blocks.\1.self_attn2."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"blocks.\1.ff.proj_in."),
    (r"transformer_blocks\.(\d+)\.ff\.net\.2\.", r"blocks.\1.ff.proj_out."),
    (r"transformer_blocks\.", "blocks."),
    (r"\.to_out\.0\.", ".to_out."),
]
_RESNET = [(r"\.time_emb_proj\.", ".emb_proj."), (r"\.conv_shortcut\.", ".skip.")]


def _sub_all(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def convert_unet_state(state: dict[str, torch.Tensor], cfg: UNetConfig) -> dict[str, torch.Tensor]:
    n = cfg.num_res_blocks
    out = {}
    for key, value in state.items():
        new = key
        new = re.sub(r"^time_embedding\.linear_1\.", "time_embed.0.", new)
        new = re.sub(r"^time_embedding\.linear_2\.", "time_embed.2.", new)
        new = re.sub(r"^class_embedding\.", "film_embed.", new)
        new = re.sub(r"^conv_norm_out\.", "norm_out.", new)
        m = re.match(r"^down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$", new)
        if m:
            level, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"down_stages.{level * n + idx}.{'res' if kind == 'resnets' else 'attn'}.{rest}"
        m = re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.(.*)$", new)
        if m:
            new = f"downsamplers.{m[1]}.{m[2]}"
        m = re.match(r"^up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$", new)
        if m:
            block, kind, idx, rest = int(m[1]), m[2], int(m[3]), m[4]
            new = f"up_stages.{block * (n + 1) + idx}.{'res' if kind == 'resnets' else 'attn'}.{rest}"
        m = re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", new)
        if m:
            new = f"upsamplers.{m[1]}.{m[2]}"
        new = re.sub(r"^mid_block\.resnets\.0\.", "mid_res1.", new)
        new = re.sub(r"^mid_block\.resnets\.1\.", "mid_res2.", new)
        new = re.sub(r"^mid_block\.attentions\.0\.", "mid_attn.", new)
        new = _sub_all(new, _TRANSFORMER + _RESNET)
        out[new] = value
    return out


# -- VAE ----------------------------------------------------------------------------------


def convert_vae_state(state: dict[str, torch.Tensor], cfg: VAEConfig) -> dict[str, torch.Tensor]:
    n = cfg.num_res_blocks
    out: dict[str, torch.Tensor] = {}
    attn_parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        new = key
        new = re.sub(r"^quant_conv\.", "encoder.quant_conv.", new)
        new = re.sub(r"^post_quant_conv\.", "decoder.post_quant_conv.", new)
        new = re.sub(r"\.conv_norm_out\.", ".norm_out.", new)
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", new)
        if m:
            new = f"encoder.down.{int(m[1]) * (n + 1) + int(m[2])}.{m[3]}"
        m = re.match(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)$", new)
        if m:
            new = f"encoder.down.{int(m[1]) * (n + 1) + n}.{m[2]}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)$", new)
        if m:
            new = f"decoder.up.{2 * int(m[1])}.{m[2]}.{m[3]}"
        m = re.match(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)$", new)
        if m:
            new = f"decoder.up.{2 * int(m[1]) + 1}.{m[2]}"
        new = re.sub(r"\.mid_block\.resnets\.0\.", ".mid.0.", new)
        new = re.sub(r"\.mid_block\.resnets\.1\.", ".mid.2.", new)
        new = re.sub(r"\.conv_shortcut\.", ".skip.", new)
        m = re.match(
            r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", new
        )
        if m:
            part = m[2]
            if part == "group_norm":
                out[f"{m[1]}.mid.1.norm.{m[3]}"] = value
            else:
                attn_parts.setdefault(f"{m[1]}:{m[3]}", {})[part] = value
            continue
        out[new] = value
    # Separate q/k/v Linear layers become one fused 1×1 convolution; the output Linear a 1×1 conv.
    for tag, parts in attn_parts.items():
        side, kind = tag.split(":")
        prefix = f"{side}.mid.1"
        missing = {"to_q", "to_k", "to_v", "to_out.0"} - set(parts)
        if missing:
            raise CheckpointError(f"vae: attention of the {side} misses {sorted(missing)} ({kind})")
        qkv = torch.cat([parts["to_q"], parts["to_k"], parts["to_v"]])
        proj = parts["to_out.0"]
        if kind == "weight":
            qkv, proj = qkv[:, :, None, None], proj[:, :, None, None]
        out[f"{prefix}.qkv.{kind}"] = qkv
        out[f"{prefix}.proj.{kind}"] = proj
    return out


# -- vocoder ------------------------------------------------------------------------------


def convert_vocoder_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # mean/scale only serve normalize_before, which is refused above.
    return {re.sub(r"^upsampler\.", "ups.", k): v for k, v in state.items() if k not in ("mean", "scale")}


# -- scheduler ----------------------------------------------------------------------------


# -- LAION-CLAP ---------------------------------------------------------------------

DROPPED = (
    r"audio_branch\.spectrogram_extractor\..*",
    r"audio_branch\.logmel_extractor\..*",
    r"audio_branch\.tscam_conv\..*",
    r"audio_branch\.head\..*",
    r"audio_branch\.layers\.\d+\.blocks\.\d+\.attn_mask",
    r"(text|audio)_transform\..*",
    r"text_branch\.embeddings\.(position_ids|token_type_ids)",
)

_BLOCK = r"audio_branch\.layers\.(\d+)\.blocks\.(\d+)\."
_HF_BLOCK = r"audio_model.audio_encoder.layers.\1.blocks.\2."
RENAMES = (
    (_BLOCK + r"norm1\.", _HF_BLOCK + "layernorm_before."),
    (_BLOCK + r"norm2\.", _HF_BLOCK + "layernorm_after."),
    (_BLOCK + r"attn\.relative_position_(bias_table|index)$", _HF_BLOCK + r"attention.self.relative_position_\3"),
    (_BLOCK + r"attn\.proj\.", _HF_BLOCK + "attention.output.dense."),
    (_BLOCK + r"mlp\.fc1\.", _HF_BLOCK + "intermediate.dense."),
    (_BLOCK + r"mlp\.fc2\.", _HF_BLOCK + "output.dense."),
    (r"audio_branch\.layers\.(\d+)\.downsample\.", r"audio_model.audio_encoder.layers.\1.downsample."),
    (r"audio_branch\.bn0\.", "audio_model.audio_encoder.batch_norm."),
    (r"audio_branch\.patch_embed\.", "audio_model.audio_encoder.patch_embed."),
    (r"audio_branch\.norm\.", "audio_model.audio_encoder.norm."),
    (r"text_branch\.", "text_model."),
    (r"(text|audio)_projection\.0\.", r"\1_projection.linear1."),
    (r"(text|audio)_projection\.2\.", r"\1_projection.linear2."),
    (r"logit_scale_(a|t)$", r"logit_scale_\1"),
)
_QKV = re.compile(_BLOCK + r"attn\.qkv\.(weight|bias)$")
_FUSION = re.compile(r"fusion|mel_conv2d")


def to_model_keys(state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """LAION key layout → ClapModel key layout; unknown keys raise, naming them."""
    fusion = sorted(k for k in state if _FUSION.search(k))
    if fusion:
        raise LaionCheckpointError(
            f"{source}: a fusion checkpoint ({fusion[0]}, …): only non-fusion LAION-CLAP checkpoints are "
            "supported (e.g. 630k-audioset-best.pt, not 630k-audioset-fusion-best.pt)"
        )
    if not any(k.startswith("text_branch.embeddings.") for k in state):
        raise LaionCheckpointError(
            f"{source}: no RoBERTa text branch (text_branch.embeddings.*); only the 'roberta' text model is supported"
        )
    out, unknown = {}, []
    for key, value in state.items():
        if any(re.fullmatch(p, key) for p in DROPPED):
            continue
        qkv = _QKV.fullmatch(key)
        if qkv:
            layer, block, kind = qkv.groups()
            prefix = f"audio_model.audio_encoder.layers.{layer}.blocks.{block}.attention.self."
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                out[f"{prefix}{name}.{kind}"] = part.clone()
            continue
        for pattern, replacement in RENAMES:
            if re.match(pattern, key):
                out[re.sub(pattern, replacement, key, count=1)] = value
                break
        else:
            unknown.append(key)
    if unknown:
        shown = ", ".join(sorted(unknown)[:10]) + (f", … ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise LaionCheckpointError(f"{source}: keys not in the LAION-CLAP (HTSAT + RoBERTa) layout: {shown}")
    return out
