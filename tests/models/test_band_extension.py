"""The band extension: the interpolation keeps the vocoder's samples, the band under the crossover
passes unchanged, the copy lands at the envelope's levels, and the graph exports to ONNX with parity."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reaudio.models.band_extension import BandExtension, BandExtensionConfig, BandLevels  # noqa: E402
from tests.models.wav_mel_export import onnx_session  # noqa: E402

CFG = BandExtensionConfig()


def _fixed_envelope(model: BandExtension, level: float) -> None:
    """Make the envelope network predict ``level`` for every band and frame."""
    with torch.no_grad():
        for p in model.envelope.parameters():
            p.zero_()
        model.envelope.out.bias.fill_(level)


def _noise(frames: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(1, frames * CFG.mel_hop, generator=torch.Generator().manual_seed(seed))


def test_the_interpolation_keeps_every_input_sample():
    model = BandExtension(CFG)
    wav = _noise(50)
    up = model.upsample(wav)
    assert up.shape[-1] == 2 * wav.shape[-1]
    assert torch.allclose(up[:, ::2], wav, atol=1e-6)


@pytest.mark.parametrize("level", [-3.0, -6.0])
def test_the_copy_takes_the_envelopes_level_above_the_crossover(level):
    model = BandExtension(CFG).eval()
    _fixed_envelope(model, level)
    frames = 120
    with torch.no_grad():
        out = model(_noise(frames), torch.zeros(1, frames, CFG.n_mels))
        levels = BandLevels(CFG)(out)[0, 4:-4]  # away from the clip's edges
    assert out.shape[-1] == 2 * frames * CFG.mel_hop
    # Every 1-kHz band but the first (whose bottom edge the untouched band under 8 kHz leaks into).
    assert torch.allclose(levels[:, 1:].mean(0), torch.full((CFG.n_bands - 1,), level), atol=0.15)


def test_the_band_under_the_crossover_passes_unchanged():
    model = BandExtension(CFG).eval()
    _fixed_envelope(model, -5.0)
    frames = 120
    wav = _noise(frames, seed=1)
    with torch.no_grad():
        out = model(wav, torch.zeros(1, frames, CFG.n_mels))[0].numpy()
        up = model.upsample(wav)[0].numpy()
    freqs = np.fft.rfftfreq(len(out), 1.0 / CFG.out_rate)
    low = freqs < CFG.crossover_hz - 500
    a, b = np.fft.rfft(out)[low], np.fft.rfft(up)[low]
    assert np.abs(a - b).mean() / np.abs(b).mean() < 0.01


def test_a_config_whose_copies_would_lose_phase_coherence_is_refused():
    with pytest.raises(ValueError, match="multiple of n_fft/hop"):
        BandExtensionConfig(shift_bins=90)
    with pytest.raises(ValueError, match="shift_bins"):
        BandExtensionConfig(shift_bins=400)


def test_onnx_export_matches_torch():
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = BandExtension(CFG).eval()
    frames = 40
    session = onnx_session(model, _noise(frames), torch.randn(1, frames, CFG.n_mels))
    for frames in (33, 90):  # other lengths than the traced one
        wav, mel = _noise(frames, seed=frames), torch.randn(2, frames, CFG.n_mels)
        wav = wav.expand(2, -1).contiguous()
        with torch.no_grad():
            expected = model(wav, mel).numpy()
        got = session.run(None, {"wav": wav.numpy(), "mel": mel.numpy()})[0]
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_a_band_extended_decoder_has_fp16_and_int8_graphs(tiny_artifacts, tmp_path):
    """The band extension is part of the decoder graph: its fp16 and int8 variants run and stay close."""
    from reaudio.engine.pipeline import Engine
    from reaudio.export.bundle import export_bundle
    from reaudio.export.int8 import Calibration, quantize_bundle
    from reaudio.models.system import load_system
    from reaudio.training.band_extension_task import band_extension_config

    cfg, models = load_system([tiny_artifacts / "system"])
    torch.manual_seed(0)
    models["band_extension"] = BandExtension(band_extension_config(cfg)).eval()
    bundle = tmp_path / "bundle"
    export_bundle(cfg, models, bundle, fp16=True, database=tiny_artifacts / "db")
    quantize_bundle(bundle, calibration=Calibration(steps=3))
    spec = Engine.from_bundle(bundle, backend="cpu").manifest.latent
    z = np.random.default_rng(1).standard_normal((1, spec.channels, 20, spec.freq)).astype(np.float32)
    out = {
        p: Engine.from_bundle(bundle, backend="cpu", precision=p).runners["decoder"].run({"latent": z})[0]
        for p in ("fp32", "fp16", "int8")
    }
    assert out["fp32"].shape == (1, 20 * 2 * cfg.samples_per_frame)
    peak = np.abs(out["fp32"]).max()
    assert np.isfinite(out["fp16"]).all() and np.abs(out["fp16"] - out["fp32"]).max() < 0.01 * peak
    assert np.isfinite(out["int8"]).all() and np.abs(out["int8"] - out["fp32"]).max() < 0.2 * peak


def test_the_band_never_pushes_a_peak_past_the_limit():
    from reaudio.models.band_extension import PEAK_LIMIT

    model = BandExtension(CFG).eval()
    _fixed_envelope(model, 1.0)  # a loud band
    frames = 60
    t = torch.arange(frames * CFG.mel_hop) / CFG.in_rate
    wav = (0.97 * torch.sin(2 * torch.pi * 200 * t))[None] + 0.02 * _noise(frames)
    with torch.no_grad():
        out = model(wav, torch.zeros(1, frames, CFG.n_mels))
        up = model.upsample(wav)
    assert out.abs().max() <= max(PEAK_LIMIT, float(up.abs().max())) + 1e-6
    quiet = out[up.abs() < 0.5] - up[up.abs() < 0.5]
    assert quiet.abs().max() > 0.01  # away from the peaks the band is there in full
