"""The engine's NumPy schedule and sampler plans (their updates are checked against torch and
diffusers references in tests/training/test_sampler_references.py)."""

import numpy as np
import pytest

from reaudio.engine.denoising.sampler import initial_noise, leading_timesteps, make_plan
from reaudio.engine.denoising.schedule import NoiseScheduleConfig

SCHEDULE = NoiseScheduleConfig()


def test_schedule_matches_audioldm_endpoints():
    betas = SCHEDULE.betas()
    assert betas[0] == pytest.approx(0.0015) and betas[-1] == pytest.approx(0.0195)
    assert np.all(np.diff(betas) > 0)


def test_leading_timesteps():
    assert leading_timesteps(SCHEDULE, 10).tolist() == [901, 801, 701, 601, 501, 401, 301, 201, 101, 1]


def test_invalid_sampler_and_steps():
    with pytest.raises(ValueError, match="valid: ddim, dpmpp-2m"):
        make_plan(SCHEDULE, "euler", 10)
    with pytest.raises(ValueError, match="steps=0"):
        make_plan(SCHEDULE, "ddim", 0)


def test_initial_noise_is_seeded_pcg64():
    a = initial_noise(7, (2, 3))
    assert np.array_equal(a, initial_noise(7, (2, 3)))
    assert np.array_equal(a, np.random.Generator(np.random.PCG64(7)).standard_normal((2, 3), dtype=np.float32))
    assert not np.array_equal(a, initial_noise(8, (2, 3)))


def test_the_most_steps_a_schedule_takes_run_and_one_more_is_refused():
    from reaudio.engine.denoising.sampler import MAX_STEPS

    schedule = NoiseScheduleConfig()
    plan = make_plan(schedule, "ddim", MAX_STEPS)
    assert plan.timesteps.max() < schedule.num_train_timesteps and len(plan) == MAX_STEPS
    with pytest.raises(ValueError, match=f"must be in 1..{MAX_STEPS}"):
        make_plan(schedule, "ddim", MAX_STEPS + 1)
