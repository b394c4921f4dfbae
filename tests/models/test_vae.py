import torch

from reaudio.models.configs import load_config
from reaudio.models.vae import AutoencoderKL, DiagonalGaussian


def test_tiny_vae_forward_backward_odd_lengths():
    cfg = load_config("tiny")
    vae = AutoencoderKL(cfg.vae)
    for frames in (125, 38):
        mel = torch.randn(2, frames, cfg.mel.n_mels)
        recon, posterior = vae(mel)
        assert recon.shape == mel.shape
        c, t, f = cfg.latent_shape(frames)
        assert posterior.mean.shape == (2, c, t, f)
        loss = (recon - mel).abs().mean() + 1e-6 * posterior.kl().mean()
        loss.backward()
        grads = [p.grad for p in vae.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        vae.zero_grad()


def test_kl_is_zero_for_standard_normal_and_positive_otherwise():
    zeros = torch.zeros(3, 8, 4, 4)
    assert torch.allclose(DiagonalGaussian(zeros).kl(), torch.zeros(3))
    moments = torch.cat([torch.full((1, 4, 2, 2), 0.5), torch.zeros(1, 4, 2, 2)], dim=1)
    # 16 elements, each 0.5 · 0.5² = 0.125.
    assert torch.allclose(DiagonalGaussian(moments).kl(), torch.tensor([2.0]))


def test_sampling_is_reproducible_with_a_generator():
    post = DiagonalGaussian(torch.randn(1, 8, 3, 3))
    a = post.sample(torch.Generator().manual_seed(3))
    b = post.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, post.mean)
