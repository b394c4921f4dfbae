"""torch modules whose forward is exactly one exported graph (one per stage)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reaudio.models.guidance_rescale import GuidanceRescale
from reaudio.models.hifigan import HiFiGANGenerator
from reaudio.models.unet import UNet
from reaudio.models.vae import AutoencoderKL


class TextEncoderGraph(nn.Module):
    """(input_ids, attention_mask) → unit-norm CLAP text embedding and token features (ours or LAION's CLAP)."""

    def __init__(self, clap: nn.Module) -> None:
        super().__init__()
        self.clap = clap

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clap.encode_text(input_ids, attention_mask)


class HFClapTextGraph(nn.Module):
    """The same contract for a Hugging Face ``ClapTextModelWithProjection`` (imported AudioLDM)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return F.normalize(out.text_embeds, dim=-1), out.last_hidden_state


class AudioEncoderGraph(nn.Module):
    """Log-mel (B, T, n_mels) → unit-norm CLAP audio embedding and M pooled audio tokens (ours or LAION's)."""

    def __init__(self, clap: nn.Module, num_tokens: int) -> None:
        super().__init__()
        self.clap = clap
        self.num_tokens = num_tokens

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clap.encode_audio(mel, self.num_tokens)


class DenoiserStepGraph(nn.Module):
    """One denoising step: UNet on conditional and null halves, guidance, sampler update.

    Inputs: latent (B, C, T, F), timestep (B,), film (B, D), uncond_film (B, D),
    guidance (B,), coefs (B, 5) from ``reaudio.engine.denoising.sampler``, prev_x0 (B, C, T, F),
    then per context its tokens (B, N, D) and mask (B, N). The unconditional half
    gets ``uncond_film`` (zeros for models trained with condition dropout to zeros;
    the embedding of "" or a negative prompt for AudioLDM) and all-false context masks.
    Outputs: next latent and this step's data prediction x0 (the next step's prev_x0).
    With ``rescale`` the guided prediction is rescaled toward the conditional one's spread
    (:mod:`reaudio.models.guidance_rescale`).
    """

    def __init__(self, unet: UNet, prediction_type: str = "epsilon", rescale: GuidanceRescale | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.context_names = [c.name for c in unet.cfg.contexts]
        self.v_prediction = prediction_type == "v_prediction"
        self.rescale = rescale if rescale is not None and rescale.factor > 0 else None

    def forward(self, latent, timestep, film, uncond_film, guidance, coefs, prev_x0, *context_inputs):
        contexts = {}
        for i, name in enumerate(self.context_names):
            tokens, mask = context_inputs[2 * i], context_inputs[2 * i + 1]
            contexts[name] = (torch.cat([tokens, tokens]), torch.cat([mask, torch.zeros_like(mask)]))
        x2 = torch.cat([latent, latent])
        film2 = torch.cat([film, uncond_film])
        out_c, out_u = self.unet(x2, torch.cat([timestep, timestep]), film2, contexts).chunk(2)
        out = out_u + guidance.view(-1, 1, 1, 1) * (out_c - out_u)
        if self.rescale is not None:
            out = self.rescale(out, out_c)
        c = coefs.to(latent.dtype).view(-1, 5, 1, 1, 1)
        # Guidance is linear, so guiding v and then converting equals converting each half
        # (the rescale is not: like diffusers, it rescales the prediction the model makes).
        eps = c[:, 1] * latent + c[:, 0] * out if self.v_prediction else out
        x0 = (latent - c[:, 1] * eps) / c[:, 0]
        return c[:, 2] * latent + c[:, 3] * x0 + c[:, 4] * prev_x0, x0


class VAEEncoderGraph(nn.Module):
    """Log-mel (B, T · r, n_mels) → scaled latent mean (B, C, T, F): where a real clip enters the latent space."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae
        self.scaling_factor = vae.cfg.scaling_factor

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(mel).mean * self.scaling_factor


class DecoderGraph(nn.Module):
    """Scaled latent (B, C, T, F) → waveform (B, T · r · hop · factor): VAE decoder, the decoder's
    mel calibration when it has one, the vocoder, its mel matching when it has one, then the band
    extension when it has one (which writes ``factor`` times the mel's rate)."""

    def __init__(
        self,
        vae: AutoencoderKL,
        vocoder: HiFiGANGenerator,
        n_mels: int,
        calibration: nn.Module | None = None,
        band_extension: nn.Module | None = None,
        mel_matching: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.vae = vae
        self.vocoder = vocoder
        self.n_mels = n_mels
        self.scaling_factor = vae.cfg.scaling_factor
        self.calibration = calibration
        self.band_extension = band_extension
        self.mel_matching = mel_matching

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        mel = self.vae.decode(latent / self.scaling_factor)[..., : self.n_mels]
        if self.calibration is not None:
            mel = self.calibration(mel)
        wav = self.vocoder(mel)
        if self.mel_matching is not None:
            wav = self.mel_matching(wav, mel)
        if self.band_extension is not None:
            wav = self.band_extension(wav, mel)
        return wav
