"""Make a random-initialised diffusers AudioLDM pipeline folder, offline (no hub).

    python -m reaudio.training.toy_audioldm OUT_DIR [--size tiny|audioldm-s]

`tiny` is for tests; `audioldm-s` has AudioLDM-S's published sizes (UNet 128
channels, [1, 2, 3, 5], VAE 128 [1, 2, 4], HiFi-GAN 1024 / [5, 4, 2, 2, 2], CLAP
text tower of RoBERTa-base width) with random weights, for benchmarks. The
tokenizer is a byte-level BPE trained here on a few sentences.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

SENTENCES = [
    "a dog barks",
    "rain falls on a tin roof",
    "a door creaks open",
    "footsteps on gravel",
    "an engine revs",
    "glass shatters",
    "a bell rings",
    "wind howls",
    "birds chirp",
    "thunder rumbles",
]


def make_tokenizer(vocab_size: int = 400):
    """A RoBERTa-style byte-level BPE tokenizer trained on SENTENCES (no download)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        SENTENCES * 20,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    bpe._tokenizer.post_processor = RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    return RobertaTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        model_max_length=512,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )


def make(out: Path, size: str = "tiny", seed: int = 0) -> Path:
    from diffusers import AudioLDMPipeline, AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    torch.manual_seed(seed)
    if size == "tiny":
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64),
            layers_per_block=2,
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=(32, 64),
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=32,
            class_embeddings_concat=True,
            attention_head_dim=(4, 8),
            norm_num_groups=8,
        )
        vae = AutoencoderKL(
            block_out_channels=[32, 64],
            in_channels=1,
            out_channels=1,
            latent_channels=4,
            down_block_types=["DownEncoderBlock2D"] * 2,
            up_block_types=["UpDecoderBlock2D"] * 2,
            norm_num_groups=8,
            scaling_factor=0.9,
        )
        text_cfg = ClapTextConfig(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=400,
            projection_dim=32,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            # Wider init than BERT's 0.02: at 0.02 a tiny random tower gives every
            # prompt the same embedding (cosine 0.999), so tests could not see text.
            initializer_range=0.2,
            initializer_factor=10.0,
        )
        voc_cfg = SpeechT5HifiGanConfig(
            model_in_dim=16,
            sampling_rate=8000,
            upsample_initial_channel=32,
            upsample_rates=[4, 4],
            upsample_kernel_sizes=[8, 8],
            resblock_kernel_sizes=[3, 5],
            resblock_dilation_sizes=[[1, 3], [1, 3]],
            normalize_before=False,
            initializer_range=0.15,
        )
        # (the default 0.01 attenuates so much that a tiny vocoder's output ignores its input)
    elif size == "audioldm-s":
        unet = UNet2DConditionModel(
            block_out_channels=(128, 256, 384, 640),
            layers_per_block=2,
            sample_size=256,
            in_channels=8,
            out_channels=8,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=(128, 256, 384, 640),
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=512,
            class_embeddings_concat=True,
        )
        vae = AutoencoderKL(
            block_out_channels=[128, 256, 512],
            in_channels=1,
            out_channels=1,
            latent_channels=8,
            down_block_types=["DownEncoderBlock2D"] * 3,
            up_block_types=["UpDecoderBlock2D"] * 3,
            scaling_factor=0.9227914214134216,
        )
        text_cfg = ClapTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            vocab_size=50265,
            projection_dim=512,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        )
        voc_cfg = SpeechT5HifiGanConfig(
            model_in_dim=64,
            sampling_rate=16000,
            upsample_initial_channel=1024,
            upsample_rates=[5, 4, 2, 2, 2],
            upsample_kernel_sizes=[16, 16, 8, 4, 4],
            resblock_kernel_sizes=[3, 7, 11],
            resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
            normalize_before=False,
        )
    else:
        raise ValueError(f"size={size!r}; valid: tiny, audioldm-s")
    scheduler = DDIMScheduler(
        beta_start=0.0015,
        beta_end=0.0195,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer = make_tokenizer()
    pipe = AudioLDMPipeline(
        vae=vae,
        text_encoder=ClapTextModelWithProjection(text_cfg),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        vocoder=SpeechT5HifiGan(voc_cfg),
    )
    pipe.save_pretrained(str(out / "pipeline"))
    return out / "pipeline"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", default="tiny", choices=("tiny", "audioldm-s"))
    args = parser.parse_args()
    print(make(args.out, args.size))


if __name__ == "__main__":
    main()
