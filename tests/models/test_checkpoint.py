import pytest
import torch
from safetensors.torch import load_file, save_file

from reaudio.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from reaudio.models.clap import CLAP
from reaudio.models.configs import load_config
from reaudio.models.hifigan import HiFiGANGenerator
from reaudio.models.unet import UNet
from reaudio.models.vae import AutoencoderKL


def _tiny_models():
    cfg = load_config("tiny")
    return [AutoencoderKL(cfg.vae), HiFiGANGenerator(cfg.vocoder), UNet(cfg.unet), CLAP(cfg.clap)]


@pytest.mark.parametrize("index", range(4), ids=["vae", "vocoder", "unet", "clap"])
def test_save_load_round_trip_is_bit_exact(index, tmp_path):
    model = _tiny_models()[index]
    save_checkpoint(tmp_path / "ckpt", model, extra={"step": 7})
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert type(loaded) is type(model) and loaded.cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.glob("ckpt/*.tmp"))


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    cfg = load_config("tiny")
    save_checkpoint(tmp_path / "ckpt", UNet(cfg.unet))
    weights = tmp_path / "ckpt" / "model.safetensors"
    state = load_file(str(weights))
    state["extra.weight"] = torch.zeros(1)
    del state["conv_in.bias"]
    state["conv_out.weight"] = torch.zeros(1, 2, 3, 3)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "ckpt")
    text = str(err.value)
    assert "missing keys: conv_in.bias" in text
    assert "unexpected keys: extra.weight" in text
    assert "conv_out.weight: checkpoint (1, 2, 3, 3)" in text


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="config.json missing"):
        load_checkpoint(tmp_path)
