import dataclasses
import json

import pytest
import torch

from reaudio.models.clap import CLAP
from reaudio.models.configs import NAMED_CONFIGS, FamilyConfig, load_config
from reaudio.models.hifigan import HiFiGANGenerator
from reaudio.models.unet import UNet
from reaudio.models.vae import AutoencoderKL
from reaudio.training.model_sizes import count_parameters


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_json_round_trip(name, tmp_path):
    cfg = load_config(name)
    cfg.save(tmp_path / "c.json")
    assert load_config(tmp_path / "c.json") == cfg


def _unet_params(cfg) -> int:
    with torch.device("meta"):
        return count_parameters(UNet(cfg.unet))


def test_audioldm_s_unet_matches_published_size_without_retrieval():
    cfg = load_config("audioldm-s").without_retrieval()
    assert 181e6 <= _unet_params(cfg) <= 186e6


def test_audioldm_l_unet_within_3_percent_of_published_739m():
    cfg = load_config("audioldm-l").without_retrieval()
    assert abs(_unet_params(cfg) - 739e6) / 739e6 <= 0.03


def test_retrieval_contexts_add_cross_attention_parameters():
    cfg = load_config("audioldm-s")
    assert _unet_params(cfg) > _unet_params(cfg.without_retrieval())


def test_tiny_whole_stack_is_under_2m_parameters():
    cfg = load_config("tiny")
    total = sum(
        count_parameters(m)
        for m in (UNet(cfg.unet), AutoencoderKL(cfg.vae), HiFiGANGenerator(cfg.vocoder), CLAP(cfg.clap))
    )
    assert total < 2_000_000


def test_inconsistent_configs_are_rejected_with_reasons():
    cfg = load_config("tiny")
    with pytest.raises(ValueError, match="vocoder upsampling product"):
        dataclasses.replace(cfg, vocoder=dataclasses.replace(cfg.vocoder, upsample_rates=(4, 4, 2)))
    with pytest.raises(ValueError, match="unet.contexts"):
        dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, contexts=()))
    with pytest.raises(ValueError, match="vae.embed_dim"):
        dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, embed_dim=8))


def test_unknown_keys_and_names_are_reported(tmp_path):
    data = load_config("tiny").to_dict()
    data["unet"]["model_chanels"] = 32
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"FamilyConfig.unet: unknown key\(s\) \['model_chanels'\]"):
        load_config(path)
    with pytest.raises(ValueError, match="named config"):
        load_config("audioldm-xl")
    path.write_text("{\n  oops\n}")
    with pytest.raises(ValueError, match=r"bad.json:2: invalid JSON"):
        load_config(path)


def test_latent_shape_rule():
    cfg = load_config("audioldm-s")
    assert cfg.latent_shape() == (8, 256, 16)
    assert cfg.latent_shape(500) == (8, 125, 16)
    assert FamilyConfig.from_dict(cfg.to_dict()).latent_shape(501) == (8, 126, 16)
