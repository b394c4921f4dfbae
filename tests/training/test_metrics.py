import numpy as np
import pytest

from reaudio.training.metrics import (
    clap_score,
    fad,
    frechet_distance,
    frequency_bucket,
    inception_score,
    kl_paired,
)


def test_frechet_distance_of_known_gaussians():
    # Identity covariances: only the means differ → ‖Δμ‖².
    assert frechet_distance(np.zeros(3), np.eye(3), np.array([1.0, 2.0, 2.0]), np.eye(3)) == pytest.approx(9.0)
    # Diagonal covariances: Σ (σ1 − σ2)² over standard deviations, plus ‖Δμ‖².
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    expected = 1.0 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_distance(np.zeros(2), s1, np.array([1.0, 0.0]), s2) == pytest.approx(expected)
    assert frechet_distance(np.ones(2), s1, np.ones(2), s1) == pytest.approx(0.0, abs=1e-9)


def test_fad_from_samples_converges_to_the_analytic_value():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 2))
    b = rng.normal([3, 0], [2, 1], (20000, 2))
    assert fad(a, b) == pytest.approx(9 + (2 - 1) ** 2, rel=0.03)


def test_kl_and_inception_score_by_hand():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.25, 0.75], [0.9, 0.1]])
    expected = (0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75) + 0.0) / 2
    assert kl_paired(p, q) == pytest.approx(expected)
    confident = np.eye(4)  # each clip certain, classes uniform overall → IS = number of classes
    assert inception_score(confident) == pytest.approx(4.0, rel=1e-6)
    assert inception_score(np.full((4, 4), 0.25)) == pytest.approx(1.0)


def test_clap_score_and_buckets():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    t = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert clap_score(a, t) == pytest.approx(0.5)
    assert [frequency_bucket(n) for n in (0, 1, 2, 10, 11, 100, 101)] == [
        "0 (unseen)",
        "1",
        "2–10",
        "2–10",
        "11–100",
        "11–100",
        ">100",
    ]
