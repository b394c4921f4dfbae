import threading

import numpy as np
import pytest

from reaudio.engine.pipeline import Engine, Request
from reaudio.engine.stages.runners import BackendUnavailable


@pytest.fixture(scope="module")
def engine(tiny_artifacts):
    return Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", threads=1)


def test_auto_backend_picks_cpu_without_a_gpu(tiny_artifacts, caplog):
    caplog.set_level("INFO")
    e = Engine.from_bundle(tiny_artifacts / "bundle")
    assert e.backend == "cpu"
    assert "backend auto → cpu" in caplog.text


def test_gpu_backends_fail_clearly_without_a_gpu(tiny_artifacts):
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        Engine.from_bundle(tiny_artifacts / "bundle", backend="cuda")
    with pytest.raises(ValueError, match="valid: auto, cpu, cuda, tensorrt, trt-native"):
        Engine.from_bundle(tiny_artifacts / "bundle", backend="metal")


def test_results_have_audio_of_the_requested_length(engine):
    results = engine.generate([Request("a beep", duration=0.5, seed=1), Request("hum", duration=1.3, seed=2)])
    assert [r.waveform.shape for r in results] == [(4000,), (10400,)]
    for r in results:
        assert r.ok and r.waveform.dtype == np.float32 and np.isfinite(r.waveform).all()
        assert np.abs(r.waveform).max() > 0
        assert r.sample_rate == 8000 and len(r.neighbours) == 2
        assert set(r.timings) == {"prepare_s", "denoise_s", "decode_s"}


def test_deterministic_for_the_same_request(engine):
    reqs = [Request("a beep", seed=5), Request("a chirp", seed=6, sampler="dpmpp-2m", steps=8)]
    a = engine.generate(reqs)
    b = engine.generate(reqs)
    for x, y in zip(a, b):
        assert np.array_equal(x.waveform, y.waveform)
    c = engine.generate([Request("a beep", seed=7)])
    assert not np.allclose(a[0].waveform, c[0].waveform)


def test_batch_composition_changes_results_only_by_float_round_off(engine):
    alone = engine.generate([Request("a beep", seed=5)])[0].waveform
    batched = engine.generate([Request("a hum", seed=1), Request("a beep", seed=5)], batch_size=2)[1].waveform
    assert np.abs(alone - batched).max() < 1e-5  # far below 16-bit quantisation (3e-5)


def test_explicit_initial_latent_is_used(engine):
    latent = np.random.default_rng(0).standard_normal((4, 20, 8)).astype(np.float32)
    r1, r2 = engine.generate([Request("x", initial_latent=latent, seed=1), Request("x", initial_latent=latent, seed=2)])
    assert np.array_equal(r1.waveform, r2.waveform)  # the seed is ignored
    assert r1.waveform.shape == (20 * 2 * 64,)
    with pytest.raises(ValueError, match=r"initial_latent shape \(20, 8\); expected \(4, T, 8\)"):
        engine.generate([Request("x", initial_latent=latent[0])])


def test_k_zero_and_per_request_k(engine):
    r0, r1 = engine.generate([Request("a beep", k=0, seed=1), Request("a beep", k=1, seed=1)], batch_size=2)
    assert r0.neighbours == [] and len(r1.neighbours) == 1
    assert not np.allclose(r0.waveform, r1.waveform)


def test_invalid_requests_fail_before_any_work(engine):
    with pytest.raises(ValueError, match="request 1: steps=0"):
        engine.generate([Request("ok"), Request("bad", steps=0)])
    with pytest.raises(ValueError, match="duration=0.0"):
        engine.generate([Request("x", duration=0.0)])


def test_negative_prompt_changes_only_its_own_clip(engine):
    plain, negative = engine.generate(
        [Request("a beep", seed=3), Request("a beep", seed=3, negative_prompt="hum")], batch_size=2
    )
    assert not np.allclose(plain.waveform, negative.waveform)
    again = engine.generate([Request("a beep", seed=3)])[0]
    assert np.abs(again.waveform - plain.waveform).max() < 1e-5


def test_stream_yields_every_result_batch_by_batch(engine):
    reqs = [Request(f"p{i}", seed=i, duration=0.5 if i % 2 else 1.0) for i in range(5)]
    stream = engine.stream(reqs, batch_size=2)
    first = next(stream)
    rest = list(stream)
    got = [first, *rest]
    assert sorted(r.seed for r in got) == list(range(5))
    # Grouped by shape: both 1.0-s clips (seeds 0, 2) come in the first batch.
    assert [r.seed for r in got[:2]] == [0, 2]


def test_concurrent_callers_get_the_same_audio(engine):
    ref = engine.generate([Request("a beep", seed=9)])[0].waveform
    outs = [None] * 4

    def work(i):
        outs[i] = engine.generate([Request("a beep", seed=9)])[0].waveform

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(o, ref) for o in outs)


def test_non_finite_audio_is_reported_not_returned(tiny_artifacts, monkeypatch):
    engine = Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu")
    decoder = engine.runners["decoder"]
    real_run = decoder.run

    def poisoned(feeds):
        (audio,) = real_run(feeds)
        audio[0, 10] = np.nan
        return [audio]

    monkeypatch.setattr(decoder, "run", poisoned)
    bad, good = engine.generate([Request("a", seed=1), Request("b", seed=2)], batch_size=2)
    assert not bad.ok and bad.waveform is None and "non-finite" in bad.error
    assert good.ok


def test_cuda_graphs_on_a_backend_without_cuda_are_refused(tiny_artifacts):
    with pytest.raises(ValueError, match="--cuda-graphs needs backend 'cuda'.*'cpu'"):
        Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", cuda_graphs=True)


def test_auto_takes_the_tensorrt_provider_only_when_it_starts(tiny_artifacts, monkeypatch):
    from reaudio.engine.stages import backends

    # onnxruntime-gpu lists TensorRT whether or not its libraries load; here it cannot start.
    monkeypatch.setattr(backends, "available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    assert not backends.provider_initialises("TensorrtExecutionProvider")
    assert backends.provider_initialises("CPUExecutionProvider")
    assert backends.resolve_backend("auto", tiny_artifacts / "bundle") == "cpu"


def test_tensorrt_engine_caches_live_under_the_cache_root(tiny_artifacts, tmp_path, monkeypatch):
    from reaudio.engine.stages.backends import ort_providers

    monkeypatch.setenv("REAUDIO_CACHE", str(tmp_path / "cache"))
    (trt, *_rest) = ort_providers("tensorrt", 0, tiny_artifacts / "bundle")
    cache = trt[1]["trt_engine_cache_path"]
    assert cache.startswith(str(tmp_path / "cache")) and not (tiny_artifacts / "bundle" / "plans").exists()
