"""Step-level batching: a request that shares its graph calls with others, at other steps, of other
lengths, k and edits, gets the audio ``Engine.generate`` makes for it alone; a cancelled request's
slot is taken at the next step; request-level batching waits for an empty batch."""

from __future__ import annotations

import numpy as np
import pytest

from reaudio.engine.pipeline import Engine, Request
from reaudio.engine.step_batching import StepBatcher


@pytest.fixture(scope="module")
def engine(tiny_artifacts):
    return Engine.from_bundle(tiny_artifacts / "bundle", backend="cpu", threads=1)


def _start_clip(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)


def _requests(rate: int) -> list[Request]:
    return [
        Request(prompt="a dog barks", seed=1, duration=1.0, steps=10),
        Request(prompt="rain on a roof", seed=2, duration=1.0, steps=7, k=1, sampler="dpmpp-2m"),
        Request(prompt="a long wind", seed=3, duration=5.0, steps=8),  # windowed: several rows a step
        Request(prompt="door slam", seed=4, duration=0.6, steps=9, guidance=2.0),
        Request(prompt="a beep fixed", seed=5, init_audio=_start_clip(rate, 1.5), inpaint="0.5:1.0", steps=6),
    ]


def test_interleaved_requests_get_the_audio_they_get_alone(engine):
    requests = _requests(engine.sample_rate)
    alone = [engine.generate([r])[0] for r in requests]
    batcher = StepBatcher(engine, slots=3)
    tickets = [batcher.submit(requests[0])]
    batcher.tick()
    batcher.tick()
    tickets.append(batcher.submit(requests[1]))  # joins at the first one's third step
    batcher.tick()
    assert batcher.active == 2 and tickets[0].step == 3 and tickets[1].step == 1
    tickets += [batcher.submit(r) for r in requests[2:]]
    batcher.run_until_idle()
    for request, expected, ticket in zip(requests, alone, tickets):
        got = ticket.future.result()
        assert got.ok and expected.ok
        assert got.waveform.shape == expected.waveform.shape
        # onnxruntime's CPU kernels here do not depend on the batch: bit-identical.
        np.testing.assert_array_equal(got.waveform, expected.waveform, err_msg=request.prompt)
        assert got.seed == request.seed and ticket.step == ticket.steps


def test_a_cancelled_lane_frees_its_slot_for_the_next_step(engine):
    batcher = StepBatcher(engine, slots=1)
    first = batcher.submit(Request(prompt="a long hum", seed=1, duration=1.0, steps=40))
    for _ in range(3):
        batcher.tick()
    waiting = batcher.submit(Request(prompt="a click", seed=2, duration=1.0, steps=5))
    batcher.tick()
    assert waiting.step == 0 and batcher.active == 1  # no slot yet
    first.cancel()
    batcher.tick()  # the cancelled lane leaves, the waiting request takes its slot and steps
    assert first.future.cancelled()
    assert waiting.step == 1
    batcher.run_until_idle()
    assert waiting.future.result().ok


def test_a_request_that_cannot_start_fails_alone(engine):
    batcher = StepBatcher(engine, slots=2)
    bad = batcher.submit(Request(prompt="x", seed=1, steps=0))
    good = batcher.submit(Request(prompt="a chime", seed=2, duration=1.0, steps=4))
    batcher.run_until_idle()
    with pytest.raises(ValueError, match="steps"):
        bad.future.result()
    assert good.future.result().ok


def test_request_level_batching_admits_only_into_an_empty_batch(engine):
    batcher = StepBatcher(engine, slots=2, mode="request", fill_wait_s=0.0)
    first = batcher.submit(Request(prompt="a beep", seed=1, duration=1.0, steps=6))
    batcher.tick()
    late = batcher.submit(Request(prompt="a boop", seed=2, duration=1.0, steps=6))
    for _ in range(5):
        batcher.tick()
        assert late.step == 0  # a slot is free, but the batch runs to its end first
    batcher.run_until_idle()
    assert first.future.result().ok and late.future.result().ok and late.step == 6


def test_unknown_mode_and_slots_are_refused(engine):
    with pytest.raises(ValueError, match="mode"):
        StepBatcher(engine, mode="token")
    with pytest.raises(ValueError, match="slots"):
        StepBatcher(engine, slots=0)
