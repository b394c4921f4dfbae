"""The frame-rate vocoder: its inverse STFT equals torch.istft, and the generator exports to ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reaudio.models.vocos import InverseSTFT, VocosConfig, VocosGenerator

TINY = VocosConfig(n_mels=16, dim=32, intermediate=64, layers=2, n_fft=64, hop_length=16, sample_rate=16000)


@pytest.mark.parametrize("n_fft, hop", [(64, 16), (2048, 512), (32, 16)])
def test_the_inverse_stft_is_torch_istft(n_fft, hop):
    torch.manual_seed(0)
    frames, bins = 11, n_fft // 2 + 1
    real, imag = torch.randn(2, frames, bins), torch.randn(2, frames, bins)
    ours = InverseSTFT(n_fft, hop)(real, imag)
    spec = torch.complex(real, imag).transpose(1, 2)  # (B, bins, T)
    theirs = torch.istft(spec, n_fft, hop, window=torch.hann_window(n_fft), center=True)
    assert ours.shape == theirs.shape == (2, (frames - 1) * hop)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5 * theirs.abs().max().item())


def test_generator_sizes_and_output_rate():
    cfg = VocosConfig()
    model = VocosGenerator(cfg)
    assert 7.5e6 < sum(p.numel() for p in model.parameters()) < 8.8e6  # a Vocos-size generator
    mel = torch.randn(1, cfg.n_mels, 87)  # 1 s of the 22.05-kHz, hop-256 mel
    audio = model(mel)
    assert audio.shape == (1, 86 * 512)  # 44.1 kHz: 512 output samples per mel frame
    assert torch.isfinite(audio).all()


def test_hop_must_divide_the_frame():
    with pytest.raises(ValueError, match="multiple"):
        VocosConfig(n_fft=1000, hop_length=300)


def test_the_generator_exports_to_onnx_with_parity(tmp_path):
    pytest.importorskip("onnx")
    import onnxruntime as ort

    torch.manual_seed(1)
    model = VocosGenerator(TINY).eval()
    mel = torch.randn(2, TINY.n_mels, 20)
    path = tmp_path / "vocos.onnx"
    torch.onnx.export(
        model,
        (mel,),
        str(path),
        input_names=["mel"],
        output_names=["audio"],
        dynamic_axes={"mel": {0: "batch", 2: "frames"}, "audio": {0: "batch", 1: "samples"}},
        opset_version=18,
        dynamo=False,
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for frames in (20, 33):
        x = torch.randn(2, TINY.n_mels, frames)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"mel": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
