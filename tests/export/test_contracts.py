import pytest
import torch

from reaudio.export.contracts import STAGES, Limits, contract
from reaudio.models.configs import load_config


@pytest.mark.parametrize("stage", STAGES)
def test_sample_inputs_follow_the_contract(stage):
    cfg = load_config("tiny")
    spec = contract(stage, cfg)
    inputs = spec.sample_inputs(cfg, batch=3, frames=21)
    dtypes = {"float32": torch.float32, "int64": torch.int64, "bool": torch.bool}
    assert len(inputs) == len(spec.inputs)
    for s, tensor in zip(spec.inputs, inputs):
        assert tensor.dtype == dtypes[s.dtype], s.name
        assert tensor.shape[0] == 3
        for dim, size in zip(s.shape, tensor.shape):
            if isinstance(dim, int):
                assert size == dim, s.name


def test_dynamic_axes_come_from_the_named_dims():
    spec = contract("denoiser", load_config("tiny"))
    axes = spec.dynamic_axes()
    assert axes["latent"] == {0: "batch", 2: "frames"}
    assert axes["retrieved_text"] == {0: "batch", 1: "text_context"}
    assert axes["timestep"] == {0: "batch"}
    assert axes["next_latent"] == {0: "batch", 2: "frames"}


def test_tensorrt_profile_is_ordered_min_opt_max():
    cfg = load_config("tiny")
    limits = Limits(batch=(1, 4, 8), latent_frames=(16, 63, 128), neighbours=(1, 2, 4))
    profile = contract("denoiser", cfg).trt_profile(cfg, limits)
    assert profile["latent"] == ((1, 4, 16, 8), (4, 4, 63, 8), (8, 4, 128, 8))
    assert profile["retrieved_text"] == ((1, 8, 32), (4, 16, 32), (8, 32, 32))  # k·L with L = 8
    for lo, opt, hi in profile.values():
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi))
    decoder = contract("decoder", cfg).trt_profile(cfg, limits)
    assert decoder["latent"][2] == (8, 4, 128, 8)


def test_unknown_stage():
    with pytest.raises(ValueError, match="valid: text_encoder, denoiser, decoder, audio_encoder"):
        contract("vocoder", load_config("tiny"))
