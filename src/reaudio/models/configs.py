"""The model family's configuration and its named sizes (tiny, sfx-small, audioldm-s/-l)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from reaudio.engine.audio.frontend import AUDIOLDM_MEL, HIFIGAN_22K_MEL, MelConfig
from reaudio.engine.bundle.dataclass_io import from_dict, to_dict, write_json_atomic
from reaudio.engine.denoising.schedule import NoiseScheduleConfig

from .clap import AudioTowerConfig, CLAPConfig
from .hifigan import HiFiGANConfig
from .laion_clap import LaionCLAPConfig
from .retrieval_features import RetrievalConfig
from .text_tower import TextTowerConfig
from .unet import ContextConfig, UNetConfig
from .vae import VAEConfig


@dataclass(frozen=True)
class FamilyConfig:
    """Every model of one Re-AudioLDM system, checked for consistency.

    Attributes:
        name: the config's name.
        clip_seconds: training clip length (generation may ask for other lengths).
        mel, vae, vocoder, unet, clap, retrieval, schedule: the components' configs.
    """

    name: str
    clip_seconds: float
    mel: MelConfig = field(default_factory=MelConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    vocoder: HiFiGANConfig = field(default_factory=HiFiGANConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    #: Our CLAP, or an imported LAION-CLAP (its own audio front end: no mel constraint).
    clap: CLAPConfig | LaionCLAPConfig = field(default_factory=CLAPConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.unet.in_channels != self.vae.embed_dim or self.unet.out_channels != self.vae.embed_dim:
            problems.append(f"unet in/out channels must equal vae.embed_dim={self.vae.embed_dim}")
        if self.vocoder.n_mels != self.mel.n_mels:
            problems.append(f"vocoder.n_mels={self.vocoder.n_mels} != mel.n_mels={self.mel.n_mels}")
        if self.vocoder.hop_length != self.mel.hop_length:
            problems.append(
                f"vocoder upsampling product {self.vocoder.hop_length} != mel.hop_length={self.mel.hop_length}"
            )
        if isinstance(self.clap, CLAPConfig) and self.clap.audio.n_mels != self.mel.n_mels:
            problems.append(f"clap.audio.n_mels={self.clap.audio.n_mels} != mel.n_mels={self.mel.n_mels}")
        if self.unet.film_dim not in (0, self.clap.embed_dim):
            problems.append(f"unet.film_dim={self.unet.film_dim} must be 0 or clap.embed_dim={self.clap.embed_dim}")
        expected = self.expected_contexts()
        actual = {c.name: c.dim for c in self.unet.contexts}
        if actual != expected:
            problems.append(f"unet.contexts {actual} must match the retrieval contexts {expected}")
        if problems:
            raise ValueError(f"FamilyConfig {self.name!r}: " + "; ".join(problems))

    def expected_contexts(self) -> dict[str, int]:
        if self.retrieval.k == 0:
            return {}
        dims = {"retrieved_text": self.clap.text.hidden_size, "retrieved_audio": self.clap.audio.width}
        return {name: dims[name] for name in self.retrieval.contexts}

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per latent frame (as the bundle manifest's ``samples_per_frame``)."""
        return self.vae.downsample_factor * self.mel.hop_length

    @property
    def clip_frames(self) -> int:
        return self.mel.num_frames(round(self.clip_seconds * self.mel.sample_rate))

    def latent_shape(self, frames: int | None = None) -> tuple[int, int, int]:
        """(C, T, F) of the latent for ``frames`` mel frames (default: one training clip)."""
        r = self.vae.downsample_factor
        frames = self.clip_frames if frames is None else frames
        return self.vae.embed_dim, -(-frames // r), -(-self.mel.n_mels // r)

    def without_retrieval(self) -> FamilyConfig:
        """The same system with k = 0: no cross-attention contexts (AudioLDM)."""
        return replace(
            self,
            retrieval=replace(self.retrieval, k=0, contexts=()),
            unet=replace(self.unet, contexts=()),
        )

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FamilyConfig:
        return from_dict(cls, data)

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())


def _contexts(text_dim: int, audio_dim: int) -> tuple[ContextConfig, ...]:
    return (ContextConfig("retrieved_text", text_dim), ContextConfig("retrieved_audio", audio_dim))


def _tiny() -> FamilyConfig:
    mel = MelConfig(sample_rate=8000, n_fft=256, hop_length=64, win_length=256, n_mels=16, fmin=0.0, fmax=4000.0)
    text = TextTowerConfig(
        pretrained=None,
        random_bert={
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 64,
        },
        hidden_size=32,
        max_length=32,
    )
    return FamilyConfig(
        name="tiny",
        clip_seconds=1.0,
        mel=mel,
        vae=VAEConfig(ch=8, ch_mult=(1, 2), num_res_blocks=1, z_channels=4, embed_dim=4, norm_groups=2),
        vocoder=HiFiGANConfig(
            n_mels=16,
            upsample_initial_channel=32,
            upsample_rates=(4, 4, 4),
            upsample_kernel_sizes=(8, 8, 8),
            resblock_kernel_sizes=(3,),
            resblock_dilations=((1, 3),),
        ),
        unet=UNetConfig(
            in_channels=4,
            out_channels=4,
            model_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_resolutions=(1, 2),
            num_head_channels=8,
            film_dim=16,
            contexts=_contexts(32, 16),
            norm_groups=4,
        ),
        clap=CLAPConfig(
            text=text,
            audio=AudioTowerConfig(n_mels=16, stem_channels=(8, 16), width=16, layers=1, heads=2, norm_groups=4),
            embed_dim=16,
        ),
        retrieval=RetrievalConfig(k=2, caption_tokens=8, audio_tokens=4),
    )


def _sfx_small() -> FamilyConfig:
    # 22.05 kHz / 80 mels so the universal HiFi-GAN (V1) can be fine-tuned rather
    # than trained; 4-s clips → 345 frames → latent 8×87×20, the size measured at
    # ≈1.4 s per batch-16 step on 2 CPU cores for a UNet of this width.
    return FamilyConfig(
        name="sfx-small",
        clip_seconds=4.0,
        mel=HIFIGAN_22K_MEL,
        vae=VAEConfig(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, z_channels=8, embed_dim=8, norm_groups=8),
        vocoder=HiFiGANConfig(
            n_mels=80,
            upsample_initial_channel=512,
            upsample_rates=(8, 8, 2, 2),
            upsample_kernel_sizes=(16, 16, 4, 4),
        ),
        unet=UNetConfig(
            in_channels=8,
            out_channels=8,
            model_channels=32,
            channel_mult=(1, 2, 4),
            num_res_blocks=2,
            attention_resolutions=(2, 4),
            num_head_channels=32,
            film_dim=256,
            contexts=_contexts(384, 128),
            norm_groups=8,
        ),
        clap=CLAPConfig(
            audio=AudioTowerConfig(n_mels=80, stem_channels=(16, 32, 64), width=128, layers=2, heads=4), embed_dim=256
        ),
        # Hybrid, audio weight 0.25: test-split neighbour precision@3 as caption matching (0.796 vs
        # 0.797), and clips a user adds come back for their own captions (top-3 0.98 vs 0.61).
        retrieval=RetrievalConfig(k=3, key="hybrid", hybrid_weight=0.25, caption_tokens=32, audio_tokens=8),
    )


def _audioldm(name: str, model_channels: int) -> FamilyConfig:
    # Sizes from AudioLDM (Liu et al., 2023) and Re-AudioLDM (Yuan et al., 2024):
    # 10.24-s clips at 16 kHz → 1024 frames → latent 8×256×16.
    return FamilyConfig(
        name=name,
        clip_seconds=10.24,
        mel=AUDIOLDM_MEL,
        vae=VAEConfig(ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=8, embed_dim=8),
        vocoder=HiFiGANConfig(),
        unet=UNetConfig(model_channels=model_channels, film_dim=512, contexts=_contexts(384, 768)),
        clap=CLAPConfig(
            audio=AudioTowerConfig(n_mels=64, stem_channels=(64, 128, 256), width=768, layers=6, heads=12),
            embed_dim=512,
        ),
        retrieval=RetrievalConfig(k=10, caption_tokens=50, audio_tokens=32),
    )


NAMED_CONFIGS = {
    "tiny": _tiny,
    "sfx-small": _sfx_small,
    "audioldm-s": lambda: _audioldm("audioldm-s", 128),
    "audioldm-l": lambda: _audioldm("audioldm-l", 256),
}


def load_config(name_or_path: str | Path) -> FamilyConfig:
    """A named config, or a JSON file written by ``FamilyConfig.save``."""
    key = str(name_or_path)
    if key in NAMED_CONFIGS:
        return NAMED_CONFIGS[key]()
    path = Path(key)
    if not path.is_file():
        raise ValueError(f"unknown config {key!r}: not a named config ({', '.join(NAMED_CONFIGS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    return FamilyConfig.from_dict(data)
