"""The GPU denoising loops' buffer logic, run on onnxruntime's CPU provider.

``denoise_device`` (IO binding, swapped buffers) and ``CudaGraphDenoiser`` (two
alternating bindings over fixed buffers) must give exactly what the plain host
loop gives; on a GPU only the provider changes.
"""

from __future__ import annotations

import numpy as np
import pytest

from reaudio.engine.denoising.cuda_graphs import (
    CudaGraphDenoiser,
    CudaGraphsUnavailable,
    fixed_dims,
)
from reaudio.engine.denoising.denoisers import (
    BoundLoop,
    GraphLoop,
    HostLoop,
    PlanLoop,
    choose_denoiser,
)
from reaudio.engine.denoising.loop import denoise_device, denoise_host
from reaudio.engine.denoising.sampler import make_plan
from reaudio.engine.pipeline import Engine, Request


@pytest.fixture(scope="module")
def captured(tiny_artifacts):
    """The denoiser's real inputs for a batch of two prompts, taken from a CPU engine run."""
    engine = Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu")
    seen = {}
    original = engine._denoise

    def spy(runners, batch, conditions):
        if not seen:  # the first batch only: later tests generate with this engine too
            seen["latent"] = engine._initial_latents(batch)
            seen["conditions"] = conditions
        return original(runners, batch, conditions)

    engine._denoise = spy
    engine.generate([Request("a dog barks", seed=1, steps=3), Request("rain", seed=2, steps=3)], batch_size=2)
    return engine, seen


@pytest.mark.parametrize("steps", [3, 4])  # odd and even: the result lands in either buffer
def test_device_loops_match_host_loop(captured, steps):
    engine, seen = captured
    runner = engine.runners["denoiser"]
    plan = make_plan(engine.manifest.schedule, "ddim", steps)
    expected = denoise_host(runner, plan, seen["latent"], seen["conditions"])

    bound = denoise_device(runner, plan, seen["latent"], seen["conditions"], 0, device="cpu")
    np.testing.assert_array_equal(bound, expected)

    spec = engine.manifest.stages["denoiser"]
    shapes = {i.name: list(i.shape) for i in spec.inputs}
    graphs = CudaGraphDenoiser(
        str(engine.bundle / spec.file), 0, runner.input_dtypes, device="cpu", input_shapes=shapes
    )
    # fixed axes let onnxruntime fuse differently: float round-off only
    tolerance = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(graphs(plan, seen["latent"], seen["conditions"]), expected, rtol=0, atol=tolerance)
    # a second call on the cached buffers must not see the first call's state
    np.testing.assert_allclose(graphs(plan, seen["latent"], seen["conditions"]), expected, rtol=0, atol=tolerance)
    assert len(graphs._states) == 1


def test_fixed_dims_reads_each_named_axis_off_the_arrays():
    shapes = {"latent": ["batch", 4, "frames", 8], "mask": ["batch", "context"]}
    arrays = {"latent": np.zeros((3, 4, 50, 8)), "mask": np.zeros((3, 7)), "other": np.zeros(2)}
    assert fixed_dims(shapes, arrays) == {"batch": 3, "frames": 50, "context": 7}


def test_refused_capture_falls_back_to_the_plain_loop(captured, caplog):
    engine, _ = captured

    class Refusing:
        def __call__(self, *args):
            raise CudaGraphsUnavailable("some nodes on the CPU provider")

    expected = engine.generate([Request("a dog barks", seed=1, steps=3)])[0].waveform
    plain = engine.denoiser
    engine.denoiser = GraphLoop(Refusing(), plain)
    try:
        got = engine.generate([Request("a dog barks", seed=1, steps=3)])[0].waveform
        assert "CUDA graphs unavailable" in caplog.text and engine.denoiser.graphs is None
        np.testing.assert_array_equal(got, expected)
    finally:
        engine.denoiser = plain


def test_each_backend_gets_its_denoiser_strategy(captured):
    engine, _ = captured
    runners = engine.runners
    assert isinstance(engine.denoiser, HostLoop) and engine.denoiser.runner is runners["denoiser"]
    assert isinstance(choose_denoiser("cuda", runners, 0), BoundLoop)
    assert isinstance(choose_denoiser("tensorrt", runners, 1), BoundLoop)
    assert isinstance(choose_denoiser("trt-native", runners), PlanLoop)
    with_graphs = choose_denoiser("cuda", runners, 0, graphs=lambda *a: None)
    assert isinstance(with_graphs, GraphLoop) and isinstance(with_graphs.fallback, BoundLoop)
    assert with_graphs.runner is runners["denoiser"]
    assert engine.fp32_retry is None  # an fp32 engine has nothing to retry in


def test_graph_sessions_are_kept_for_the_most_recent_shapes_only(captured):
    engine, seen = captured
    runner = engine.runners["denoiser"]
    spec = engine.manifest.stages["denoiser"]
    shapes = {i.name: list(i.shape) for i in spec.inputs}
    graphs = CudaGraphDenoiser(
        str(engine.bundle / spec.file), 0, runner.input_dtypes, device="cpu", input_shapes=shapes, max_shapes=2
    )
    plan = make_plan(engine.manifest.schedule, "ddim", 2)
    for rows in (slice(0, 1), slice(0, 2), slice(1, 2), slice(0, 1)):  # batch 1, 2, 1 (cached), 1
        latent = seen["latent"][rows]
        conditions = {k: v[rows] for k, v in seen["conditions"].items()}
        expected = denoise_host(runner, plan, latent, conditions)
        got = graphs(plan, latent, conditions)
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        assert len(graphs._states) <= 2
