"""Mel matching: the output's mel approaches the asked one, audio already matching stays as it is,
no sample passes the peak limit, bad settings are refused, and the stage exports to ONNX with parity."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reaudio.engine.audio.frontend import MelConfig, log_mel  # noqa: E402
from reaudio.models.mel_matching import (  # noqa: E402
    PEAK_LIMIT,
    MelMatching,
    MelMatchingConfig,
    bin_spreading,
    limit_peaks,
)
from tests.models.wav_mel_export import onnx_session  # noqa: E402

MEL = MelConfig(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=80, fmax=8000.0)


def _tone_bursts(frames: int) -> np.ndarray:
    """A clip whose spectrum changes: two tones, one gated, over quiet noise."""
    t = np.arange(frames * MEL.hop_length) / MEL.sample_rate
    rng = np.random.default_rng(0)
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t) * (np.sin(2 * np.pi * 3 * t) > 0)
    return (wave + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def _white(frames: int, seed: int = 1, level: float = 0.05) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(frames * MEL.hop_length)).astype(np.float32)


def _match(wave: np.ndarray, asked: np.ndarray, cfg: MelMatchingConfig | None = None) -> np.ndarray:
    with torch.no_grad():
        return MelMatching(MEL, cfg)(torch.from_numpy(wave)[None], torch.from_numpy(asked)[None])[0].numpy()


def _mel_error(wave: np.ndarray, asked: np.ndarray) -> float:
    """Mean |log-mel difference| away from the clip's edges."""
    return float(np.abs(log_mel(wave, MEL) - asked)[4:-4].mean())


def test_the_output_takes_the_mel_it_was_asked_for():
    frames = 120
    asked = log_mel(_tone_bursts(frames), MEL)
    vocoded = _white(frames)  # a vocoder that got everything wrong but the length
    matched = _match(vocoded, asked)
    assert matched.shape == vocoded.shape
    before, after = _mel_error(vocoded, asked), _mel_error(matched, asked)
    assert after < before / 4, (before, after)
    one_pass = _match(vocoded, asked, MelMatchingConfig(iterations=1, relaxation=1.0))
    assert after < _mel_error(one_pass, asked)  # the repeated passes are what converge


def test_audio_that_already_has_its_mel_passes_almost_unchanged():
    wave = _tone_bursts(80)
    matched = _match(wave, log_mel(wave, MEL))
    inner = slice(4 * MEL.hop_length, -4 * MEL.hop_length)
    assert np.abs(matched[inner] - wave[inner]).max() < 0.02 * np.abs(wave).max()


def test_no_iterations_is_the_identity_and_items_of_a_batch_stay_apart():
    frames = 40
    wave, asked = _white(frames), log_mel(_tone_bursts(frames), MEL)
    assert np.array_equal(_match(wave, asked, MelMatchingConfig(iterations=0)), wave)
    model = MelMatching(MEL)
    pair = torch.from_numpy(np.stack([wave, _white(frames, seed=5)]))
    mels = torch.from_numpy(np.stack([asked, log_mel(_white(frames, seed=6), MEL)]))
    with torch.no_grad():
        both = model(pair, mels)
        alone = model(pair[:1], mels[:1])
    assert torch.allclose(both[:1], alone, atol=1e-5)


def test_every_bin_gets_a_gain_from_the_bands_over_it_or_its_nearest():
    from reaudio.engine.audio.frontend import mel_filterbank

    fb = np.asarray(mel_filterbank(MEL))
    spread = bin_spreading(fb)
    assert spread.shape == fb.shape and np.allclose(spread.sum(0), 1.0)
    top = np.flatnonzero(fb.sum(0) > 0).max()
    assert np.array_equal(spread[:, -1], spread[:, top])  # above the mel's fmax: the top band's gain


def test_the_result_never_passes_the_peak_limit_and_is_untouched_away_from_peaks():
    frames = 60
    quiet = _white(frames, level=0.05)
    loud = log_mel(_white(frames, seed=2, level=0.9), MEL)  # asks for 25 dB more: the peaks would pass 1
    matched = _match(quiet, loud)
    assert np.abs(matched).max() <= PEAK_LIMIT + 1e-6
    x = torch.from_numpy(_white(200, level=0.1))[None].clone()
    x[0, 20000] = 2.0
    limited = limit_peaks(x)[0]
    assert float(limited.abs().max()) <= PEAK_LIMIT + 1e-6
    # A peak reaches 3.5 blocks of 256 samples either side: nothing farther moves.
    assert torch.equal(limited[:18970], x[0, :18970]) and torch.equal(limited[21030:], x[0, 21030:])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"iterations": -1}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"relaxation": 3.0}, "relaxation"),
        ({"max_gain_db": 0.0}, "max_gain_db"),
        ({"passes": 3}, "unknown keys"),
    ],
)
def test_bad_settings_are_refused_with_what_is_valid(settings, message):
    with pytest.raises(ValueError, match=message):
        MelMatchingConfig.from_dict(settings)


def test_a_mel_it_cannot_match_is_refused():
    with pytest.raises(ValueError, match="reflect_half"):
        MelMatching(MelConfig(sample_rate=22050, hop_length=256, padding="center", fmax=8000.0))
    with pytest.raises(ValueError, match="natural-log magnitude"):
        MelMatching(MelConfig(sample_rate=22050, hop_length=256, log="log10", fmax=8000.0))


def test_onnx_export_matches_torch():
    pytest.importorskip("onnxruntime")
    model = MelMatching(MEL).eval()
    frames = 30
    wav, mel = torch.from_numpy(_white(frames))[None], torch.from_numpy(log_mel(_tone_bursts(frames), MEL))[None]
    session = onnx_session(model, wav, mel)
    for frames in (23, 75):  # other lengths than the traced one
        wav = np.stack([_white(frames, seed=frames), _white(frames, seed=frames + 1, level=0.5)])
        mel = np.stack([log_mel(_tone_bursts(frames), MEL), log_mel(_white(frames, seed=9), MEL)])
        with torch.no_grad():
            expected = model(torch.from_numpy(wav), torch.from_numpy(mel)).numpy()
        got = session.run(None, {"wav": wav, "mel": mel})[0]
        assert got.shape == expected.shape == wav.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
