"""Audio embedding backbones for FAD and the label classifier (pluggable).

A backbone has ``name``, ``sample_rate`` and ``embed(waveforms) -> (N, D)``.
Built in: ``aisfx`` (the sound-effect embedding network shipped in the aisfx
wheel, Mazzanti et al., ISMIR 2022, CC-BY 4.0 weights; its package needs old
numpy/librosa, so it is installed with --no-deps and only its weights file is
read) and ``clap`` (this project's CLAP audio tower). Any other backbone, e.g.
VGGish or PANNs weights a user has locally: ``--backbone package.module:factory``
where ``factory()`` returns such an object.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reaudio.engine.audio.audio_io import prepare_audio
from reaudio.engine.audio.frontend import MelConfig, analysis_window, mel_filterbank


class EmbeddingBackbone(Protocol):
    name: str
    sample_rate: int

    def embed(self, waveforms: list[np.ndarray]) -> np.ndarray: ...


# -- aisfx ------------------------------------------------------------------------------------


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, pool: int) -> torch.Tensor:
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.max_pool2d(x, pool) if pool > 1 else x


class AISFXNet(nn.Module):
    """Four conv blocks (64–512 channels), mean over frequency, max over time → 512-d."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 8 * width]
        for i in range(4):
            self.add_module(f"conv_block{i + 1}", _ConvBlock(chans[i], chans[i + 1]))

    def forward(self, spec: torch.Tensor) -> torch.Tensor:  # (B, T, F)
        x = spec.unsqueeze(1)
        for i, pool in enumerate((2, 2, 2, 1)):
            x = getattr(self, f"conv_block{i + 1}")(x, pool)
        return x.mean(dim=3).amax(dim=2)


class AISFXBackbone:
    """The aisfx embedding model with its front end: 44.1 kHz, 96 HTK mels, log10(1e4·P + 1)."""

    name = "aisfx"
    sample_rate = 44100
    block_frames, hop_frames = 100, 50  # ≈ 2.3-s blocks with 50 % overlap, as in the paper
    norm_max = 9.457798957824707  # the paper's min-max normalisation constant

    def __init__(self, device: str = "cpu") -> None:
        from reaudio.models.pretrained import wheel_data

        path = wheel_data("aisfx", "models/checkpoint.pth", "aisfx --no-deps")
        # The file pickles numpy scalars beside the weights (not loadable with
        # weights_only); it is package data of the installed wheel.
        weights, _ = torch.load(path, map_location="cpu", weights_only=False)
        self.net = AISFXNet()
        prefix = "embedding_net."
        self.net.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)})
        self.net.eval().to(device)
        self.device = device
        self.mel = MelConfig(
            sample_rate=44100,
            n_fft=2048,
            hop_length=1024,
            win_length=2048,
            n_mels=96,
            fmin=0.0,
            fmax=22050.0,
            padding="center",
            mel_scale="htk",
            mel_norm="none",
            power=2.0,
            log="none",
        )
        fb = mel_filterbank(self.mel)
        self.fbank = fb / np.maximum(fb.sum(axis=1, keepdims=True), 1e-12)  # unit-area (l1) filters

    def spectrogram(self, wav: np.ndarray) -> np.ndarray:
        peak = np.abs(wav).max()
        x = (wav / peak if peak > 0 else wav).astype(np.float64)
        pad = self.mel.n_fft // 2
        x = np.pad(x, (pad, pad))
        frames = np.lib.stride_tricks.sliding_window_view(x, self.mel.n_fft)[:: self.mel.hop_length]
        power = np.abs(np.fft.rfft(frames * analysis_window(self.mel), axis=-1)) ** 2
        return np.log10((power @ self.fbank.T) * 1e4 + 1.0) / self.norm_max  # (T, 96)

    def blocks(self, spec: np.ndarray) -> np.ndarray:
        b, h = self.block_frames, self.hop_frames
        count = max(1, (len(spec) - b) // h + 1)
        spec = np.concatenate([spec, np.zeros((max(0, b - len(spec)), spec.shape[1]))])
        return np.stack([spec[i * h : i * h + b] for i in range(count)])

    @torch.no_grad()
    def embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        """One 512-d embedding per clip: the mean over its blocks."""
        out = []
        for wav in waveforms:
            blocks = torch.from_numpy(self.blocks(self.spectrogram(wav))).float().to(self.device)
            out.append(self.net(blocks).mean(0).cpu().numpy())
        return np.stack(out)


class CLAPBackbone:
    """This project's CLAP audio embedding (unit norm)."""

    name = "clap"

    def __init__(self, clap, mel_cfg: MelConfig) -> None:
        from reaudio.models.mel import LogMel

        self.clap = clap.eval()
        self.mel = LogMel(mel_cfg)
        self.sample_rate = mel_cfg.sample_rate

    @torch.no_grad()
    def embed(self, waveforms: list[np.ndarray]) -> np.ndarray:
        return np.stack(
            [self.clap.embed_audio(self.mel(torch.from_numpy(w)).unsqueeze(0))[0].numpy() for w in waveforms]
        )


def load_backbone(spec: str, clap=None, mel_cfg: MelConfig | None = None) -> EmbeddingBackbone:
    """ "aisfx", "clap" (needs ``clap`` and ``mel_cfg``) or "package.module:factory"."""
    if spec == "aisfx":
        return AISFXBackbone()
    if spec == "clap":
        if clap is None or mel_cfg is None:
            raise ValueError("backbone 'clap' needs a CLAP checkpoint")
        return CLAPBackbone(clap, mel_cfg)
    if ":" in spec:
        module, _, factory = spec.partition(":")
        return getattr(importlib.import_module(module), factory)()
    raise ValueError(f"backbone {spec!r}; valid: aisfx, clap, or package.module:factory")


def embed_at(backbone: EmbeddingBackbone, waveforms: list[np.ndarray], sample_rate: int) -> np.ndarray:
    """Resample to the backbone's rate, then embed."""
    if sample_rate != backbone.sample_rate:
        waveforms = [prepare_audio(w, sample_rate, backbone.sample_rate) for w in waveforms]
    return backbone.embed(waveforms)
