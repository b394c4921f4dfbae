import pytest
import torch

from reaudio.models.configs import load_config
from reaudio.models.unet import UNet


def _inputs(cfg, batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    c, t, f = cfg.latent_shape(frames)
    x = torch.randn(batch, c, t, f, generator=g)
    film = torch.nn.functional.normalize(torch.randn(batch, cfg.unet.film_dim, generator=g), dim=-1)
    contexts = {
        "retrieved_text": (torch.randn(batch, 2 * 8, 32, generator=g), torch.ones(batch, 16, dtype=torch.bool)),
        "retrieved_audio": (torch.randn(batch, 2 * 4, 16, generator=g), torch.ones(batch, 8, dtype=torch.bool)),
    }
    return x, torch.randint(0, 1000, (batch,), generator=g), film, contexts


@pytest.mark.parametrize("frames", [250, 500, 77])  # latent frames 125, 250, 39
def test_any_latent_length_forward_backward(frames):
    cfg = load_config("tiny")
    unet = UNet(cfg.unet)
    x, t, film, ctx = _inputs(cfg, 2, frames)
    out = unet(x, t, film, ctx)
    assert out.shape == x.shape
    out.square().mean().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None]
    assert not missing


def test_padded_context_tokens_do_not_change_the_output():
    cfg = load_config("tiny")
    unet = UNet(cfg.unet).eval()
    x, t, film, ctx = _inputs(cfg, 2, 64)
    tokens, mask = ctx["retrieved_text"]
    mask = mask.clone()
    mask[:, 10:] = False
    ref = unet(x, t, film, {**ctx, "retrieved_text": (tokens, mask)})
    garbage = tokens.clone()
    garbage[:, 10:] = 100.0
    out = unet(x, t, film, {**ctx, "retrieved_text": (garbage, mask)})
    torch.testing.assert_close(out, ref)
    changed = tokens.clone()
    changed[:, :10] += 1.0
    assert not torch.allclose(unet(x, t, film, {**ctx, "retrieved_text": (changed, mask)}), ref)


def test_fully_masked_context_equals_absent_context():
    cfg = load_config("tiny")
    unet = UNet(cfg.unet).eval()
    x, t, film, ctx = _inputs(cfg, 2, 64)
    tokens, mask = ctx["retrieved_audio"]
    dropped = unet(x, t, film, {**ctx, "retrieved_audio": (tokens, torch.zeros_like(mask))})
    absent = unet(x, t, film, {"retrieved_text": ctx["retrieved_text"]})
    torch.testing.assert_close(dropped, absent)
    assert torch.isfinite(dropped).all()


def test_each_condition_changes_the_prediction():
    cfg = load_config("tiny")
    unet = UNet(cfg.unet).eval()
    x, t, film, ctx = _inputs(cfg, 1, 64)
    ref = unet(x, t, film, ctx)
    assert not torch.allclose(unet(x, t, -film, ctx), ref)
    assert not torch.allclose(unet(x, t + 100, film, ctx), ref)
    assert not torch.allclose(unet(x, t, film, {}), ref)


def test_batch_items_are_independent():
    cfg = load_config("tiny")
    unet = UNet(cfg.unet).eval()
    x, t, film, ctx = _inputs(cfg, 3, 64)
    full = unet(x, t, film, ctx)
    one = unet(x[1:2], t[1:2], film[1:2], {k: (v[1:2], m[1:2]) for k, (v, m) in ctx.items()})
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-5)


def test_unknown_context_is_an_error():
    cfg = load_config("tiny")
    unet = UNet(cfg.unet)
    x, t, film, _ = _inputs(cfg, 1, 32)
    with pytest.raises(ValueError, match="unknown context"):
        unet(x, t, film, {"captions": (torch.zeros(1, 2, 32), None)})


def test_input_differences_name_inputs_not_widths():
    from dataclasses import replace

    from reaudio.models.unet import ContextConfig

    cfg = load_config("tiny").unet
    assert cfg.input_differences(replace(cfg, model_channels=cfg.model_channels * 2)) == []
    film = cfg.input_differences(replace(cfg, film_dim=cfg.film_dim + 8))
    assert film == [f"FiLM width {cfg.film_dim} vs {cfg.film_dim + 8}"]
    channels = cfg.input_differences(replace(cfg, in_channels=3, out_channels=3))
    assert channels == [f"latent channels {cfg.in_channels} vs 3"]
    widened = tuple(ContextConfig(c.name, c.dim + 1) for c in cfg.contexts)
    (contexts,) = cfg.input_differences(replace(cfg, contexts=widened))
    assert contexts.startswith("contexts ")
