import numpy as np
import pytest
import soundfile as sf

from reaudio.engine.audio.audio_io import AudioLoadError, load_audio


def test_stereo_44k_is_mixed_down_and_resampled(tmp_path):
    sr = 44100
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    right = 0.5 * np.sin(2 * np.pi * 440 * t + np.pi)  # cancels the left channel
    quiet = 0.25 * np.sin(2 * np.pi * 1000 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left + quiet, right + quiet], axis=1), sr, subtype="FLOAT")
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(spectrum.argmax() - 1000) <= 1  # 1 Hz bins: the 440 Hz pair cancelled
    assert np.abs(audio[1000:-1000]).max() == pytest.approx(0.25, rel=0.02)


def test_keeps_channels_when_asked(tmp_path):
    path = tmp_path / "two.wav"
    sf.write(path, np.zeros((800, 2), np.float32), 8000)
    assert load_audio(path, 8000, mono=False).shape == (2, 800)


def test_missing_file(tmp_path):
    with pytest.raises(AudioLoadError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav", 16000)


def test_unreadable_file(tmp_path):
    path = tmp_path / "junk.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioLoadError, match=r"junk\.wav: unreadable audio"):
        load_audio(path, 16000)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(AudioLoadError, match="no audio samples"):
        load_audio(path, 16000)
