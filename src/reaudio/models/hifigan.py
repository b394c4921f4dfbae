"""HiFi-GAN V1-style vocoder (log-mel → waveform) and its training discriminators."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

LRELU_SLOPE = 0.1


@dataclass(frozen=True)
class HiFiGANConfig:
    """Generator sizes (Kong et al., 2020, V1 layout).

    Attributes:
        n_mels: input mel bands.
        upsample_initial_channel: channels after the input convolution.
        upsample_rates: transposed-convolution strides; their product is the hop length.
        upsample_kernel_sizes: kernel of each transposed convolution.
        resblock_kernel_sizes: kernels of the parallel multi-receptive-field blocks.
        resblock_dilations: dilations inside each of those blocks.
    """

    n_mels: int = 64
    upsample_initial_channel: int = 1024
    upsample_rates: tuple[int, ...] = (5, 4, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))

    def __post_init__(self) -> None:
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes must have the same length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilations):
            raise ValueError("resblock_kernel_sizes and resblock_dilations must have the same length")

    @property
    def hop_length(self) -> int:
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        return hop


def _pad(kernel: int, dilation: int = 1) -> int:
    return (kernel * dilation - dilation) // 2


class ResBlock(nn.Module):
    """Pairs of dilated and plain convolutions with leaky-ReLU, each pair residual."""

    def __init__(self, ch: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            weight_norm(nn.Conv1d(ch, ch, kernel, dilation=d, padding=_pad(kernel, d))) for d in dilations
        )
        self.convs2 = nn.ModuleList(weight_norm(nn.Conv1d(ch, ch, kernel, padding=_pad(kernel))) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            x = x + c2(F.leaky_relu(c1(F.leaky_relu(x, LRELU_SLOPE)), LRELU_SLOPE))
        return x


class HiFiGANGenerator(nn.Module):
    """Log-mel (B, T, n_mels) → waveform (B, T · hop_length) in [-1, 1]."""

    def __init__(self, cfg: HiFiGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.upsample_initial_channel
        self.conv_pre = weight_norm(nn.Conv1d(cfg.n_mels, ch, 7, padding=3))
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            out = ch // 2 ** (i + 1)
            self.ups.append(
                weight_norm(nn.ConvTranspose1d(out * 2, out, kernel, stride=rate, padding=(kernel - rate) // 2))
            )
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations):
                self.resblocks.append(ResBlock(out, k, d))
        self.conv_post = weight_norm(nn.Conv1d(out, 1, 7, padding=3))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel.transpose(1, 2))
        n = len(self.cfg.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, LRELU_SLOPE))
            x = sum(self.resblocks[i * n + j](x) for j in range(n)) / n
        # The V1 generator uses leaky-ReLU's default slope (0.01) here.
        x = torch.tanh(self.conv_post(F.leaky_relu(x)))
        return x.squeeze(1)

    def remove_weight_norm(self) -> None:
        """Fold weight norm into plain weights (for export); outputs are unchanged."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _width(channels: int, width: float) -> int:
    return max(16, int(channels * width))


class PeriodDiscriminator(nn.Module):
    def __init__(self, period: int, width: float = 1.0) -> None:
        super().__init__()
        self.period = period
        chans = (1, *(_width(c, width) for c in (32, 128, 512, 1024, 1024)))
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(chans[i], chans[i + 1], (5, 1), (3 if i < 4 else 1, 1), padding=(2, 0)))
            for i in range(5)
        )
        self.conv_post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, t = x.shape
        if t % self.period:
            x = F.pad(x, (0, self.period - t % self.period), mode="reflect")
        x = x.reshape(b, 1, -1, self.period)  # (B, 1, T / p, p)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return x.flatten(1), features


class ScaleDiscriminator(nn.Module):
    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        w = lambda c: _width(c, width)  # noqa: E731
        spec = [
            (1, w(128), 15, 1, 1),
            (w(128), w(128), 41, 2, 4),
            (w(128), w(256), 41, 2, 16),
            (w(256), w(512), 41, 4, 16),
            (w(512), w(1024), 41, 4, 16),
            (w(1024), w(1024), 41, 1, 16),
            (w(1024), w(1024), 5, 1, 1),
        ]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv1d(i, o, k, s, groups=g, padding=k // 2)) for i, o, k, s, g in spec
        )
        self.conv_post = weight_norm(nn.Conv1d(w(1024), 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = x.unsqueeze(1)
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), LRELU_SLOPE)
            features.append(x)
        x = self.conv_post(x)
        features.append(x)
        return x.flatten(1), features


class MultiPeriodDiscriminator(nn.Module):
    def __init__(self, periods: tuple[int, ...] = (2, 3, 5, 7, 11), width: float = 1.0) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(PeriodDiscriminator(p, width) for p in periods)

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        return [d(wav) for d in self.discriminators]


class MultiScaleDiscriminator(nn.Module):
    def __init__(self, scales: int = 3, width: float = 1.0) -> None:
        super().__init__()
        self.discriminators = nn.ModuleList(ScaleDiscriminator(width) for _ in range(scales))
        self.pool = nn.AvgPool1d(4, 2, padding=2)

    def forward(self, wav: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        outs = []
        for i, d in enumerate(self.discriminators):
            if i:
                wav = self.pool(wav.unsqueeze(1)).squeeze(1)
            outs.append(d(wav))
        return outs


def discriminator_loss(real: list, fake: list) -> torch.Tensor:
    """Least-squares GAN loss for the discriminators."""
    return sum(((1 - r[0]) ** 2).mean() + (f[0] ** 2).mean() for r, f in zip(real, fake))


def generator_adversarial_loss(fake: list) -> torch.Tensor:
    return sum(((1 - f[0]) ** 2).mean() for f in fake)


def feature_matching_loss(real: list, fake: list) -> torch.Tensor:
    return 2 * sum(F.l1_loss(ff, rf.detach()) for r, f in zip(real, fake) for rf, ff in zip(r[1], f[1]))
