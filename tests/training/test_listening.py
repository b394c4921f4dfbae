import numpy as np
import pytest

from reaudio.training.listening import (
    envelope_correlation,
    is_clipped,
    listener_metrics,
    neighbour_label_scores,
    paired_minus_unpaired,
)

SR = 8000


def test_clipping_counts_samples_at_full_scale():
    wav = 0.5 * np.sin(np.linspace(0, 100, SR))
    assert not is_clipped(wav)
    assert is_clipped(np.clip(4 * wav, -1, 1))
    wav[:5] = 1.0  # 5 of 8000 samples: under 0.1 %
    assert not is_clipped(wav)


def test_envelope_correlation_follows_the_loudness_shape():
    rng = np.random.default_rng(0)
    decay = np.exp(-np.linspace(0, 6, SR))
    a, b = rng.normal(size=SR) * decay, rng.normal(size=SR) * decay
    assert envelope_correlation(a, b, SR) > 0.9
    assert envelope_correlation(a, b[::-1], SR) < -0.5
    assert envelope_correlation(a, np.ones(SR), SR) == 0.0  # a flat envelope carries no shape


def test_paired_minus_unpaired_is_zero_when_clips_ignore_their_prompts():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(50, 8))
    assert paired_minus_unpaired(real + 0.1 * rng.normal(size=real.shape), real) > 0.5
    same = np.tile(rng.normal(size=(1, 8)), (50, 1))  # every clip the same sound
    assert paired_minus_unpaired(same, real) == pytest.approx(0.0, abs=1e-9)


def test_neighbour_label_scores():
    scores = neighbour_label_scores(["dog", "cat", ""], [["dog", "dog", "cow"], ["cow", "cow", "cow"], ["x"]], 3)
    assert scores == {"precision@3": pytest.approx(1 / 3), "hit@3": 0.5}
    assert neighbour_label_scores(["dog"], [["cow", "dog"]], 1) == {"precision@1": 0.0, "hit@1": 0.0}


def test_listener_metrics_report_levels():
    rng = np.random.default_rng(1)
    loud = [np.clip(3 * rng.normal(size=SR), -1, 1) for _ in range(3)]
    emb = rng.normal(size=(3, 4))
    m = listener_metrics(loud, loud, emb, emb, SR)
    assert m["clipped_clips"] == 1.0 and m["median_rms_dbfs"] > -3 and m["envelope_correlation"] > 0.99
