"""Training-side pieces of the sound-quality work: loudness normalisation, independent
condition dropout, min-SNR weighting."""

import numpy as np
import pytest

pytest.importorskip("torch")
import torch  # noqa: E402

from reaudio.engine.denoising.schedule import NoiseScheduleConfig  # noqa: E402
from reaudio.training.diffusion import Diffusion  # noqa: E402
from reaudio.training.loudness import loudness_db, normalise_loudness  # noqa: E402
from reaudio.training.tasks import condition_keep_masks, each_context_keeps  # noqa: E402
from reaudio.training.trainer import TrainConfig  # noqa: E402

SR = 22050


def test_a_full_scale_sine_measures_as_bs1770_says():
    t = np.arange(SR * 2) / SR
    # BS.1770: a 0 dBFS 997 Hz sine reads -3.01 LUFS (K-weighting is ~0 dB there).
    assert loudness_db(np.sin(2 * np.pi * 997 * t), SR) == pytest.approx(-3.01, abs=0.1)


def test_normalised_clips_share_one_level_and_keep_below_the_peak_ceiling():
    rng = np.random.default_rng(0)
    quiet = 0.01 * rng.normal(size=SR).astype(np.float32)
    loud = 0.5 * rng.normal(size=SR).astype(np.float32)
    for wav in (quiet, loud):
        out = normalise_loudness(wav, SR, -20.0)
        assert loudness_db(out, SR) == pytest.approx(-20.0, abs=0.1)
        assert np.abs(out).max() <= 10 ** (-1 / 20) + 1e-6
    click = np.zeros(SR, np.float32)
    click[100] = 0.1  # a peak far above its loudness: the ceiling wins
    assert np.abs(normalise_loudness(click, SR, -20.0)).max() == pytest.approx(10 ** (-1 / 20), rel=1e-5)
    assert not normalise_loudness(np.zeros(SR, np.float32), SR, -20.0).any()


def test_film_and_contexts_drop_independently_and_together():
    torch.manual_seed(0)
    cfg = TrainConfig(cfg_dropout=0.1, film_dropout=0.2, context_dropout=0.3)
    film, ctx = condition_keep_masks(200_000, cfg, "cpu")
    assert (~film & ~ctx).float().mean().item() == pytest.approx(0.1 + 0.9 * 0.2 * 0.3, abs=0.005)
    assert (film & ~ctx).float().mean().item() == pytest.approx(0.9 * 0.8 * 0.3, abs=0.005)  # prompt, no neighbours
    assert (~film & ctx).float().mean().item() == pytest.approx(0.9 * 0.2 * 0.7, abs=0.005)  # neighbours only
    film, ctx = condition_keep_masks(1000, TrainConfig(cfg_dropout=0.1), "cpu")
    assert torch.equal(film, ctx)  # the old behaviour: all conditions dropped together


def test_each_retrieved_context_can_drop_alone():
    torch.manual_seed(0)
    cfg = TrainConfig(cfg_dropout=0.1, context_dropout=0.1, single_context_dropout=0.2)
    _, ctx = condition_keep_masks(200_000, cfg, "cpu")
    keeps = each_context_keeps(ctx, ["retrieved_text", "retrieved_audio"], cfg, "cpu")
    text, audio = keeps["retrieved_text"], keeps["retrieved_audio"]
    assert not (text & ~ctx).any() and not (audio & ~ctx).any()  # a context dropped with all stays dropped
    kept = 0.9 * 0.9
    assert (text & ~audio).float().mean().item() == pytest.approx(kept * 0.8 * 0.2, abs=0.005)  # captions only
    assert (~text & audio).float().mean().item() == pytest.approx(kept * 0.2 * 0.8, abs=0.005)  # audio only
    assert (text & audio).float().mean().item() == pytest.approx(kept * 0.64, abs=0.005)
    state = torch.get_rng_state()
    together = each_context_keeps(ctx, ["retrieved_text", "retrieved_audio"], TrainConfig(), "cpu")
    assert all(torch.equal(mask, ctx) for mask in together.values())
    assert torch.equal(state, torch.get_rng_state())  # off: no draws, so older runs keep their noise
    with pytest.raises(ValueError, match="single_context_dropout 1.5 is not a probability"):
        TrainConfig(single_context_dropout=1.5)


def test_min_snr_weights():
    d = Diffusion(NoiseScheduleConfig())
    t = torch.tensor([0, 100, 500, 999])
    assert torch.equal(d.loss_weights(t, 0.0), torch.ones(4))
    w = d.loss_weights(t, 5.0)
    snr = d.alphas_cumprod[t] / (1 - d.alphas_cumprod[t])
    assert torch.allclose(w, (torch.clamp(snr, max=5.0) / snr).float())
    assert w[0] < 0.1 and w[-1] == 1.0  # low noise down-weighted, high noise untouched


def test_ema_warms_up_so_a_short_run_keeps_no_trace_of_the_initial_weights(tmp_path):
    from torch import nn

    from reaudio.training.trainer import Trainer

    class Drift:
        """A weight pushed from 0 to 1 by its gradient: the EMA should follow it."""

        deliverables = ()  # nothing to save: the EMA is read from the trainer
        progress = False

        def setup(self, trainer):
            self.w = nn.Linear(1, 1, bias=False)
            nn.init.zeros_(self.w.weight)

        def trainable(self):
            return {"w": self.w}

        def train_step(self, trainer, step):
            loss = (self.w.weight - 1.0).pow(2).sum()
            trainer.optimise("w", loss)
            return {"loss": loss.item()}

        def evaluate(self, trainer):
            return {}

        def finalize(self, trainer, folder):
            pass

    task = Drift()
    trainer = Trainer(
        task,
        tmp_path / "run",
        TrainConfig(steps=300, lr=0.05, warmup_steps=0, weight_decay=0.0, ema_decay=0.999, log_every=1000),
        {},
    )
    trainer.run()
    raw = task.w.weight.item()
    ema = trainer.ema["w"].weight.item()
    assert raw == pytest.approx(1.0, abs=0.01)
    # Without warm-up, 0.999**300 = 74 % of the zero initialisation would remain (EMA ≈ 0.2).
    assert ema > 0.8


def test_v_target_is_the_velocity_and_gives_back_the_clean_latent():
    d = Diffusion(NoiseScheduleConfig(prediction_type="v_prediction"))
    torch.manual_seed(0)
    z0, noise = torch.randn(4, 2, 3, 5), torch.randn(4, 2, 3, 5)
    t = torch.tensor([0, 200, 700, 999])
    zt, v = d.q_sample(z0, t, noise), d.target(z0, t, noise)
    a = d.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(a.sqrt() * zt - (1 - a).sqrt() * v, z0, atol=1e-5)  # x0 from v
    for i in range(len(t)):
        alpha, sigma = float(a[i].sqrt()), float((1 - a[i]).sqrt())
        assert torch.allclose(d.to_epsilon(zt[i], v[i], alpha, sigma), noise[i], atol=1e-5)
    eps_model = Diffusion(NoiseScheduleConfig())
    assert torch.equal(eps_model.target(z0, t, noise), noise)


def test_min_snr_weights_for_v_prediction_divide_by_snr_plus_one():
    d = Diffusion(NoiseScheduleConfig(prediction_type="v_prediction"))
    t = torch.tensor([0, 100, 500, 999])
    snr = d.alphas_cumprod[t] / (1 - d.alphas_cumprod[t])
    assert torch.allclose(d.loss_weights(t, 5.0), (torch.clamp(snr, max=5.0) / (snr + 1)).float())


def test_the_exported_step_of_a_v_model_equals_the_step_of_its_noise_estimate():
    from reaudio.engine.denoising.sampler import make_plan
    from reaudio.export.graphs import DenoiserStepGraph

    class FixedOutput(torch.nn.Module):
        """A stand-in UNet: conditional and unconditional outputs fixed per call."""

        cfg = type("Cfg", (), {"contexts": ()})()

        def __init__(self, cond, uncond):
            super().__init__()
            self.cond, self.uncond = cond, uncond

        def forward(self, x, t, film, contexts):
            return torch.cat([self.cond, self.uncond])

    torch.manual_seed(1)
    x, v_c, v_u = torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5), torch.randn(3, 2, 4, 5)
    plan = make_plan(NoiseScheduleConfig(prediction_type="v_prediction"), "ddim", 10)
    coefs = torch.tensor(plan.coefs[3], dtype=torch.float32).expand(3, 5)
    alpha, sigma = float(coefs[0, 0]), float(coefs[0, 1])
    args = (
        torch.full((3,), int(plan.timesteps[3])),
        torch.zeros(3, 4),
        torch.zeros(3, 4),
        torch.full((3,), 2.5),
        coefs,
        torch.zeros_like(x),
    )
    nxt_v, x0_v = DenoiserStepGraph(FixedOutput(v_c, v_u), "v_prediction")(x, *args)
    eps = lambda v: sigma * x + alpha * v  # noqa: E731
    nxt_e, x0_e = DenoiserStepGraph(FixedOutput(eps(v_c), eps(v_u)), "epsilon")(x, *args)
    assert torch.allclose(nxt_v, nxt_e, atol=1e-5) and torch.allclose(x0_v, x0_e, atol=1e-5)
    v = v_u + 2.5 * (v_c - v_u)
    assert torch.allclose(x0_v, alpha * x - sigma * v, atol=1e-4)  # the v-model's own x0 formula
