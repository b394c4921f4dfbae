"""--backend openvino: every stage of the tiny bundle matches onnxruntime, bf16 stays close, and
the same request gives the same audio twice."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from reaudio.engine.pipeline import Engine, Request  # noqa: E402
from reaudio.engine.stages.backends import make_runners  # noqa: E402
from reaudio.engine.stages.runners import BackendUnavailable  # noqa: E402


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """OpenVINO's compiled-model cache goes under the cache root: a private one per test."""
    monkeypatch.setenv("REAUDIO_CACHE", str(tmp_path / "cache"))


class _Recording:
    """An onnxruntime runner that keeps the feeds it ran."""

    def __init__(self, runner) -> None:
        self.runner, self.feeds = runner, []
        self.input_dtypes = runner.input_dtypes

    def run(self, feeds):
        self.feeds.append({k: np.array(v) for k, v in feeds.items()})
        return self.runner.run(feeds)


@pytest.fixture(scope="module")
def recorded(tiny_artifacts):
    """Real feeds of every stage: a generation (text, denoiser, decoder), a start clip (vae_encoder)
    and an audio embedding (audio_encoder), recorded on the onnxruntime CPU backend."""
    engine = Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu")
    for name in list(engine.runners):
        engine.runners[name] = _Recording(engine.runners[name])
    start = (0.3 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)
    engine.generate([Request("a short high beep", duration=1.0, seed=1, steps=3)])
    engine.generate([Request("rapid clicking", init_audio=start, strength=0.6, seed=2, steps=3)])
    engine.encode_audio([start])
    return engine


def test_every_stage_matches_onnxruntime(recorded, tiny_artifacts):
    bundle = tiny_artifacts / "bundle"
    runners = make_runners(bundle, recorded.manifest, "openvino", threads=1)
    assert set(runners) == set(recorded.runners)
    assert list((Path(os.environ["REAUDIO_CACHE"]) / "openvino").iterdir())  # compiled models cached there
    for name, recording in recorded.runners.items():
        assert recording.feeds, f"stage {name} never ran"
        for feeds in recording.feeds[:3]:
            expected = recording.runner.run(feeds)
            got = runners[name].run(feeds)
            for e, g in zip(expected, got):
                if e.dtype.kind != "f":
                    assert np.array_equal(e, g), name
                    continue
                assert np.abs(g - e).max() <= 1e-5 * max(np.abs(e).max(), 1e-6), name


def test_generation_is_deterministic_and_bf16_stays_close(tiny_artifacts):
    bundle = tiny_artifacts / "bundle"
    request = Request("a low electrical hum", duration=1.0, seed=4, steps=4)
    onnx = Engine.from_bundle(bundle, backend="cpu").generate([request])[0].waveform
    openvino = Engine.from_bundle(bundle, backend="openvino")
    a, b = openvino.generate([request])[0].waveform, openvino.generate([request])[0].waveform
    assert np.array_equal(a, b)
    assert np.abs(a - onnx).max() <= 1e-4 * np.abs(onnx).max()
    bf16 = Engine.from_bundle(bundle, backend="openvino", precision="bf16").generate([request])[0].waveform
    assert bf16.shape == onnx.shape and np.isfinite(bf16).all()
    from reaudio.engine.audio.frontend import log_mel

    mel = Engine.from_bundle(bundle, backend="cpu").manifest.mel
    # bf16 keeps ~3 significant digits: the log-mel moves, but stays the same sound.
    assert np.abs(log_mel(bf16, mel) - log_mel(onnx, mel)).mean() < 0.5


def test_bf16_is_refused_off_openvino(tiny_artifacts):
    with pytest.raises(BackendUnavailable, match="precision 'bf16' runs on the openvino backend only"):
        Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", precision="bf16")


def test_a_bf16_decoder_keeps_its_signal_processing_after_the_vocoder_in_f32(tiny_artifacts):
    from reaudio.engine.bundle.manifest import read_bundle_manifest
    from reaudio.engine.stages.openvino_runner import OpenVinoRunner, openvino_core, split_precise_tail

    bundle = tiny_artifacts / "bundle-fullband"  # its decoder ends in a band extension
    manifest = read_bundle_manifest(bundle)
    core = openvino_core(None)
    path = bundle / manifest.stages["decoder"].file
    head, tail = split_precise_tail(core.read_model(str(path)))
    head_names = [op.get_friendly_name() for op in head.get_ordered_ops()]
    tail_names = [op.get_friendly_name() for op in tail.get_ordered_ops()]
    assert any(n.startswith("/vocoder/") for n in head_names) and not any(n.startswith("/vocoder/") for n in tail_names)
    assert any(n.startswith("/band_extension/") for n in tail_names)
    assert not any(n.startswith("/band_extension/") for n in head_names)
    assert split_precise_tail(core.read_model(str(bundle / manifest.stages["denoiser"].file))) is None

    latent = np.random.default_rng(0).standard_normal((2, 4, 12, 8)).astype(np.float32)
    whole = core.compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    first = core.compile_model(head, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    second = core.compile_model(tail, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    middle = first({"latent": latent})
    chained = second([middle[o] for o in first.outputs])[0]
    expected = whole({"latent": latent})[0]
    assert chained.shape == expected.shape
    assert np.abs(chained - expected).max() <= 1e-6 * np.abs(expected).max()  # the cut loses nothing

    spec = manifest.stages["decoder"]
    bf16 = OpenVinoRunner(core, path, spec, "bf16", threads=1)
    assert bf16.tail is not None and OpenVinoRunner(core, path, spec, "fp32", threads=1).tail is None
    (out,) = bf16.run({"latent": latent})
    assert out.shape == expected.shape and np.isfinite(out).all()
