"""Training-side pieces of the sound-quality work: loudness normalisation, independent
condition dropout, min-SNR weighting."""

import numpy as np
import pytest

pytest.importorskip("torch")
import torch  # noqa: E402

from reaudio.engine.schedule import NoiseScheduleConfig  # noqa: E402
from reaudio.training.diffusion import Diffusion  # noqa: E402
from reaudio.training.loudness import loudness_db, normalise_loudness  # noqa: E402
from reaudio.training.tasks import condition_keep_masks  # noqa: E402
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
    trainer = Trainer(task, tmp_path / "run", TrainConfig(steps=300, lr=0.05, warmup_steps=0, weight_decay=0.0,
                                                          ema_decay=0.999, log_every=1000), {})  # fmt: skip
    trainer.run()
    raw = task.w.weight.item()
    ema = trainer.ema["w"].weight.item()
    assert raw == pytest.approx(1.0, abs=0.01)
    # Without warm-up, 0.999**300 = 74 % of the zero initialisation would remain (EMA ≈ 0.2).
    assert ema > 0.8
