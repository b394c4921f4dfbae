import torch

from reaudio.models.configs import load_config
from reaudio.models.hifigan import (
    HiFiGANGenerator,
    MultiPeriodDiscriminator,
    MultiScaleDiscriminator,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)


def test_generator_output_length_and_backward():
    cfg = load_config("tiny").vocoder
    gen = HiFiGANGenerator(cfg)
    mel = torch.randn(2, 21, cfg.n_mels)
    wav = gen(mel)
    assert wav.shape == (2, 21 * cfg.hop_length)
    assert wav.abs().max() <= 1.0
    wav.square().mean().backward()
    assert all(p.grad is not None for p in gen.parameters())


def test_remove_weight_norm_keeps_outputs_and_drops_parametrizations():
    gen = HiFiGANGenerator(load_config("tiny").vocoder).eval()
    mel = torch.randn(1, 17, 16)
    before = gen(mel)
    assert any("parametrizations" in k for k in gen.state_dict())
    gen.remove_weight_norm()
    assert not any("parametrizations" in k for k in gen.state_dict())
    torch.testing.assert_close(gen(mel), before, rtol=1e-5, atol=1e-6)


def test_discriminators_and_losses_train_step():
    gen = HiFiGANGenerator(load_config("tiny").vocoder)
    mpd, msd = MultiPeriodDiscriminator(), MultiScaleDiscriminator()
    real = torch.randn(2, 1024) * 0.1
    fake = gen(torch.randn(2, 16, 16))
    d_loss = discriminator_loss(mpd(real), mpd(fake.detach())) + discriminator_loss(msd(real), msd(fake.detach()))
    d_loss.backward()
    assert torch.isfinite(d_loss)
    real_out, fake_out = mpd(real), mpd(fake)
    g_loss = generator_adversarial_loss(fake_out) + feature_matching_loss(real_out, fake_out)
    g_loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gen.parameters())
