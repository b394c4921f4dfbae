"""LAION-CLAP checkpoints (the ``laion-clap`` package's layout) as a CLAP for retrieval.

``reaudio import laion-clap CKPT.pt --tokenizer tokenizer.json --out DIR`` reads the
checkpoint with torch alone (the laion-clap package builds RoBERTa from the hub and
needs torchvision), maps its keys onto transformers' ``ClapModel`` (RoBERTa text
tower, HTSAT Swin audio tower) and writes a checkpoint folder that ``reaudio db
build --clap DIR`` loads like one of ours.

Supported: non-fusion checkpoints with a RoBERTa text branch and an HTSAT audio
branch (e.g. ``630k-audioset-best.pt``, ``music_audioset_epoch_15_esc_90.14.pt``).
The audio front end is LAION's (48 kHz, 64 mel bands 50–14 000 Hz, hop 480, power
in dB, 10-s windows; shorter clips repeat-padded, longer ones centre-cropped so the
result is deterministic), computed by the engine's NumPy front end — the same code
the exported ``audio_encoder`` stage is fed by — and tested against transformers'
``ClapFeatureExtractor``.

Exported as a bundle's ``text_encoder`` and ``audio_encoder`` stages (``reaudio
export`` of a system trained against it), the manifest records that front end.

Sizes are read off the weights; the only one the weights cannot tell is the
text tower's head count (RoBERTa's 64-wide heads are assumed, ``text_heads``
overrides).
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reaudio.engine.audio.frontend import MelConfig, fit_window  # noqa: F401  (fit_window: re-exported)
from reaudio.engine.bundle.manifest import AudioFrontend

from .key_maps import LaionCheckpointError, load_state_strict, to_model_keys  # noqa: F401  (re-exported)
from .layers import pool_tokens

#: RoBERTa's LayerNorm epsilon (transformers' CLAP text config defaults to BERT's 1e-12).
ROBERTA_LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class LaionTextConfig:
    vocab_size: int = 50265
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 514
    type_vocab_size: int = 1
    pad_token_id: int = 1
    max_tokens: int = 77

    @property
    def max_length(self) -> int:  # the name our own text tower's config uses
        return self.max_tokens


@dataclass(frozen=True)
class LaionAudioConfig:
    patch_width: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 8
    spec_size: int = 256
    patch_size: int = 4
    mel_bins: int = 64
    sample_rate: int = 48000
    hop_length: int = 480
    n_fft: int = 1024
    fmin: float = 50.0
    fmax: float = 14000.0
    max_seconds: float = 10.0

    @property
    def width(self) -> int:
        return self.patch_width * 2 ** (len(self.depths) - 1)

    def frontend(self) -> AudioFrontend:
        """LAION's audio front end (what transformers' ``ClapFeatureExtractor`` computes for
        non-fusion models: periodic Hann, centred reflect-padded STFT, power, Slaney mel,
        10·log10 with a 1e-10 floor), as the engine's NumPy front end."""
        mel = MelConfig(
            sample_rate=self.sample_rate,
            n_fft=self.n_fft,
            hop_length=self.hop_length,
            win_length=self.n_fft,
            n_mels=self.mel_bins,
            fmin=self.fmin,
            fmax=self.fmax,
            padding="center",
            power=2.0,
            log="log10",
            log_floor=1e-10,
            norm_std=0.1,
        )
        return AudioFrontend(mel=mel, window_seconds=self.max_seconds)


@dataclass(frozen=True)
class LaionCLAPConfig:
    """Both towers, the joint space and the RoBERTa tokenizer (its tokenizer.json text)."""

    text: LaionTextConfig = field(default_factory=LaionTextConfig)
    audio: LaionAudioConfig = field(default_factory=LaionAudioConfig)
    embed_dim: int = 512
    tokenizer: str = ""


class LaionCLAP(nn.Module):
    """transformers' ClapModel behind the interface our database code uses (see models/clap.py)."""

    def __init__(self, cfg: LaionCLAPConfig) -> None:
        super().__init__()
        from tokenizers import Tokenizer
        from transformers import ClapAudioConfig, ClapConfig, ClapModel, ClapTextConfig

        from reaudio.engine.stages.text_tokenizer import TextTokenizer

        self.cfg = cfg
        t, a = cfg.text, cfg.audio
        text = ClapTextConfig(
            vocab_size=t.vocab_size,
            hidden_size=t.hidden_size,
            num_hidden_layers=t.layers,
            num_attention_heads=t.heads,
            intermediate_size=t.intermediate_size,
            max_position_embeddings=t.max_positions,
            type_vocab_size=t.type_vocab_size,
            pad_token_id=t.pad_token_id,
            projection_dim=cfg.embed_dim,
            layer_norm_eps=ROBERTA_LAYER_NORM_EPS,
        )
        audio = ClapAudioConfig(
            patch_embeds_hidden_size=a.patch_width,
            depths=list(a.depths),
            num_attention_heads=list(a.heads),
            window_size=a.window_size,
            spec_size=a.spec_size,
            patch_size=a.patch_size,
            patch_stride=[a.patch_size, a.patch_size],
            num_mel_bins=a.mel_bins,
            hidden_size=a.width,
            projection_dim=cfg.embed_dim,
            enable_fusion=False,
        )
        config = ClapConfig(text_config=text.to_dict(), audio_config=audio.to_dict(), projection_dim=cfg.embed_dim)
        self.model = ClapModel(config).eval()
        self.tokenizer = TextTokenizer(Tokenizer.from_str(cfg.tokenizer), t.max_tokens) if cfg.tokenizer else None

    # -- text ---------------------------------------------------------------------------

    def text_tokens(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """RoBERTa's last hidden states (B, L, hidden): the retrieved-caption context."""
        return self.encode_text(ids, mask)[1]

    def embed_text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings (B, embed_dim): projection of RoBERTa's pooled output."""
        return self.encode_text(ids, mask)[0]

    # -- audio --------------------------------------------------------------------------

    def audio_input(self, audio: np.ndarray, mel) -> torch.Tensor:
        """One mono clip at ``mel.cfg.sample_rate`` → HTSAT's log-mel input (1, 1, frames, mel_bins)."""
        feats = self.cfg.audio.frontend().features(audio, mel.cfg.sample_rate)
        return torch.from_numpy(np.ascontiguousarray(feats[None, None], dtype=np.float32))

    def audio_tokens(self, features: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """HTSAT's final feature map as a token sequence, pooled to ``num_tokens`` (B, M, width)."""
        return self.encode_audio(features, num_tokens)[1]

    def embed_audio(self, features: torch.Tensor) -> torch.Tensor:
        """Unit-norm audio embeddings (B, embed_dim)."""
        return self.encode_audio(features, 1)[0]

    # -- both outputs of a tower in one pass (the exported stages) -------------------------

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-norm text embeddings, RoBERTa's last hidden states)."""
        out = self.model.text_model(input_ids=ids, attention_mask=mask)
        return F.normalize(self.model.text_projection(out.pooler_output), dim=-1), out.last_hidden_state

    def encode_audio(self, features: torch.Tensor, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit-norm audio embeddings, ``num_tokens`` pooled HTSAT tokens) of log-mel features
        (B, 1, frames, mel_bins), or (B, frames, mel_bins) as the exported stage takes them."""
        if features.dim() == 3:
            features = features.unsqueeze(1)
        out = self.model.audio_model(input_features=features)
        states = out.last_hidden_state
        if states.dim() == 4:  # (B, C, F, T) → time-major tokens
            states = states.flatten(2).transpose(1, 2)
        return F.normalize(self.model.audio_projection(out.pooler_output), dim=-1), pool_tokens(states, num_tokens)

    def tokenizer_json(self) -> str:
        return self.cfg.tokenizer


# -- checkpoint mapping ------------------------------------------------------------------


#: LAION-only tensors with no counterpart in the model: the fixed STFT/mel front end (done
#: in NumPy, see ``LaionAudioConfig.frontend``), HTSAT's frame-wise classifier, the training-loss MLPs, and
#: buffers that are rebuilt.
def _numpy_scalar_globals() -> list:
    """What unpickling NumPy scalars needs, and nothing more: the scalar constructor (under
    NumPy 1's name, which the published checkpoints carry, and NumPy 2's), ``numpy.dtype``
    and the concrete dtype classes of numbers and booleans."""
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1
        from numpy.core.multiarray import scalar
    dtypes = {type(np.dtype(code)) for code in "?bhilqBHILQefdgFD"}
    return [
        scalar,
        (scalar, "numpy.core.multiarray.scalar"),
        (scalar, "numpy._core.multiarray.scalar"),
        np.dtype,
        *sorted(dtypes, key=lambda t: t.__name__),
    ]


def load_checkpoint_file(path) -> object:
    """``torch.load`` with ``weights_only=True`` that also accepts NumPy scalars.

    LAION-CLAP's published ``.pt`` files keep NumPy scalars beside the weights (training
    metadata), which the weights-only unpickler refuses; they are allow-listed here rather
    than turning the unpickler's safety off. Anything else still fails, with its name.
    """
    allow = getattr(torch.serialization, "safe_globals", None)  # torch ≥ 2.5
    try:
        if allow is None:
            return torch.load(str(path), map_location="cpu", weights_only=True)
        with allow(_numpy_scalar_globals()):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).split("WeightsUnpickler error:")[-1].strip().split("\n")[0]
        upgrade = "" if allow else " (torch ≥ 2.5 loads the NumPy scalars of published checkpoints)"
        raise LaionCheckpointError(
            f"{path}: refused by the weights-only loader ({reason}); only tensors, containers and NumPy scalars "
            f"are loaded from checkpoint files, never arbitrary objects{upgrade}"
        ) from e


def read_laion_state(path) -> dict[str, torch.Tensor]:
    """The weights of a LAION-CLAP ``.pt`` (``{"state_dict": …}`` or a bare dict), ``module.`` stripped."""
    data = load_checkpoint_file(path)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LaionCheckpointError(f"{path}: not a LAION-CLAP checkpoint (no state_dict of tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def infer_config(state: dict[str, torch.Tensor], tokenizer: str, text_heads: int | None = None) -> LaionCLAPConfig:
    """Sizes read off LAION-layout weights (see the module doc for the one that cannot be)."""

    def need(key: str) -> torch.Tensor:
        if key not in state:
            raise LaionCheckpointError(f"missing key {key}: not a LAION-CLAP (HTSAT + RoBERTa) checkpoint")
        return state[key]

    def count(pattern: str) -> int:
        return len({m.group(1) for k in state if (m := re.match(pattern, k))})

    vocab, hidden = need("text_branch.embeddings.word_embeddings.weight").shape
    heads = text_heads or hidden // 64
    if heads < 1 or hidden % heads:
        raise LaionCheckpointError(f"text width {hidden} is not a multiple of 64: give the text head count")
    text = LaionTextConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        layers=count(r"text_branch\.encoder\.layer\.(\d+)\."),
        heads=heads,
        intermediate_size=need("text_branch.encoder.layer.0.intermediate.dense.weight").shape[0],
        max_positions=need("text_branch.embeddings.position_embeddings.weight").shape[0],
        type_vocab_size=need("text_branch.embeddings.token_type_embeddings.weight").shape[0],
    )
    patch = need("audio_branch.patch_embed.proj.weight")
    layers = count(r"audio_branch\.layers\.(\d+)\.")
    depths = tuple(count(rf"audio_branch\.layers\.{i}\.blocks\.(\d+)\.") for i in range(layers))
    head_counts = tuple(
        need(f"audio_branch.layers.{i}.blocks.0.attn.relative_position_bias_table").shape[1] for i in range(layers)
    )
    table = need("audio_branch.layers.0.blocks.0.attn.relative_position_bias_table").shape[0]
    window = (round(table**0.5) + 1) // 2
    spec_size = 256
    mask = state.get("audio_branch.layers.0.blocks.1.attn_mask")
    if mask is not None:  # windows per image side × window × patch
        spec_size = round(mask.shape[0] ** 0.5) * window * patch.shape[-1]
    audio = LaionAudioConfig(
        patch_width=patch.shape[0],
        depths=depths,
        heads=head_counts,
        window_size=window,
        spec_size=spec_size,
        patch_size=patch.shape[-1],
        mel_bins=need("audio_branch.bn0.weight").shape[0],
    )
    embed = need("text_projection.2.weight").shape[0]
    width = need("audio_projection.0.weight").shape[1]
    if width != audio.width:
        raise LaionCheckpointError(f"audio projection takes {width} features, HTSAT ends at {audio.width}")
    return LaionCLAPConfig(text=text, audio=audio, embed_dim=embed, tokenizer=tokenizer)


def import_laion_clap(path, tokenizer_json: str, text_heads: int | None = None) -> LaionCLAP:
    """Build a :class:`LaionCLAP` with the weights of the checkpoint at ``path``."""

    state = read_laion_state(path)
    cfg = infer_config(state, tokenizer_json, text_heads)
    model = LaionCLAP(cfg)
    mapped = to_model_keys(state, str(path))
    buffers = ("position_ids", "token_type_ids", "relative_position_index", "num_batches_tracked")
    for key, value in model.state_dict().items():
        if key.endswith(buffers):  # buffers a checkpoint may or may not carry; not weights
            mapped.setdefault(key.removeprefix("model."), value)
    load_state_strict(model, {f"model.{k}": v for k, v in mapped.items()}, str(path))
    return model.eval()
