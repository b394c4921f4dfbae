"""KL autoencoder on log-mel spectrograms (AudioLDM's first stage)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Upsample, group_norm


@dataclass(frozen=True)
class VAEConfig:
    """Encoder/decoder sizes.

    Attributes:
        in_channels: input image channels (1: a single log-mel "image").
        ch: base channel width.
        ch_mult: width multiplier per resolution; len(ch_mult) - 1 downsamplings.
        num_res_blocks: residual blocks per resolution.
        z_channels: channels of the encoder's bottleneck.
        embed_dim: latent channels (the diffusion model's in/out channels).
        attn_in_mid: self-attention block in the middle of encoder and decoder.
        scaling_factor: latents are multiplied by this before diffusion (computed from
            data after training: 1 / std of the latents).
        norm_groups: GroupNorm groups.
    """

    in_channels: int = 1
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    z_channels: int = 8
    embed_dim: int = 8
    attn_in_mid: bool = True
    scaling_factor: float = 1.0
    norm_groups: int = 32

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(in_ch, groups)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch, groups)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions."""

    def __init__(self, ch: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(ch, groups)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3).unbind(1)  # (B, HW, C)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


def _mid(ch: int, attn: bool, groups: int) -> nn.Sequential:
    return nn.Sequential(
        ResnetBlock(ch, ch, groups), AttnBlock(ch, groups) if attn else nn.Identity(), ResnetBlock(ch, ch, groups)
    )


class VAEDownsample(nn.Module):
    """Stride-2 3×3 convolution after padding one row/column at the end (LDM's autoencoder)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        blocks: list[nn.Module] = []
        ch = cfg.ch
        for level, mult in enumerate(cfg.ch_mult):
            out = cfg.ch * mult
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(ch, out, cfg.norm_groups))
                ch = out
            if level != len(cfg.ch_mult) - 1:
                blocks.append(VAEDownsample(ch))
        self.down = nn.Sequential(*blocks)
        self.mid = _mid(ch, cfg.attn_in_mid, cfg.norm_groups)
        self.norm_out = group_norm(ch, cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.down(self.conv_in(x)))
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.ch * cfg.ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = _mid(ch, cfg.attn_in_mid, cfg.norm_groups)
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.ch_mult))):
            out = cfg.ch * cfg.ch_mult[level]
            stage = nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                stage.append(ResnetBlock(ch, out, cfg.norm_groups))
                ch = out
            self.up.append(stage)
            if level != 0:
                self.up.append(Upsample(ch))
        self.norm_out = group_norm(ch, cfg.norm_groups)
        self.conv_out = nn.Conv2d(ch, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for module in self.up:
            if isinstance(module, Upsample):
                h = module(h)
            else:
                for block in module:
                    h = block(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        if size is not None:
            h = h[..., : size[0], : size[1]]
        return h


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) per latent element."""

    def __init__(self, moments: torch.Tensor) -> None:
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) summed over latent elements, per item: (B,)."""
        return 0.5 * (self.mean.square() + self.logvar.exp() - 1.0 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    """Log-mel (B, T, n_mels) ↔ latent (B, embed_dim, ceil(T / r), ceil(n_mels / r))."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, mel: torch.Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.encoder(self._pad(mel.unsqueeze(1))))

    def decode(self, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Latent → log-mel (B, T, n_mels); ``size`` crops to the original (T, n_mels)."""
        return self.decoder(z, size).squeeze(1)

    def forward(self, mel: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(mel)
        z = posterior.sample() if sample else posterior.mean
        return self.decode(z, tuple(mel.shape[-2:])), posterior

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        # Pad time and frequency up to a multiple of the downsampling factor so the
        # decoder's output covers the input; decode() crops back.
        r = self.cfg.downsample_factor
        pad_t, pad_f = (-x.shape[-2]) % r, (-x.shape[-1]) % r
        if pad_t or pad_f:
            x = F.pad(x, (0, pad_f, 0, pad_t), mode="replicate")
        return x


class MelPatchDiscriminator(nn.Module):
    """Real or decoded, judged patch by patch on a log-mel image (B, T, n_mels).

    The VAE decoder's adversary: an L1 loss alone decodes the mean of what a latent could be,
    a smeared spectrogram the vocoder renders as hiss; judging local patches asks for the
    sharp onsets and harmonics of real ones (as the image autoencoders behind latent diffusion
    do, Esser et al. 2021). Returns one (logits, features) pair in a list, the form of the
    HiFi-GAN losses.
    """

    def __init__(self, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        convs, ch = [], 1
        for i in range(layers):
            out = width * 2**i
            convs.append(nn.utils.parametrizations.weight_norm(nn.Conv2d(ch, out, 4, stride=2, padding=1)))
            ch = out
        self.convs = nn.ModuleList(convs)
        self.conv_post = nn.utils.parametrizations.weight_norm(nn.Conv2d(ch, 1, 3, padding=1))

    def forward(self, mel: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        x, features = mel.unsqueeze(1), []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return [(x.flatten(1), features)]
