"""Step-level batching: requests join a running batch at the next denoising step and leave when done.

``Engine.generate`` runs a batch from its first step to its last, so a request that arrives meanwhile
waits for the whole batch. Here (iteration-level batching, as in Orca, vLLM and text-generation-
inference) every request is a lane with its own sampler plan, step, latent and conditions; each tick
admits queued requests into free slots and runs one denoiser call over every lane's rows, each row at
its own step (the graph takes per-row timesteps, coefficients and guidance). Rows of one latent shape
share a call: clips longer than the bundle's window are cut into windows of the window's length (the
windowed loop's windows, blended the same way), so a long clip shares calls with clips of that length.

A lane computes exactly what ``Engine.generate`` computes for it alone; what differs is only which
other rows share its graph calls, so its audio equals ``generate``'s wherever the backend's kernels
do not depend on the batch (``benchmarks/serve_load.py`` measures the difference).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .denoising.known_regions import levels_after_steps
from .denoising.loop import step_feeds
from .denoising.sampler import SamplerPlan
from .denoising.window_plans import WindowPlan
from .denoising.windowed_loops import WINDOWS_PER_CALL

if TYPE_CHECKING:  # the command line imports MODES: it must not pull the audio libraries in with them
    from .pipeline import EditedBatch, Engine
    from .planning import Request, Resolved

log = logging.getLogger(__name__)

#: How requests enter the batch: "step" at any step, "request" only into an empty batch (which then
#: runs to its end: request-level batching, the baseline step-level batching is measured against).
MODES = ("step", "request")


@dataclass(eq=False)  # one ticket is one request: compared and hashed by identity
class Ticket:
    """A submitted request: ``future`` gives its :class:`Result` (or raises ``CancelledError``);
    ``step`` of ``steps`` is its progress, ``on_step(ticket)`` is called after each step."""

    request: Request
    future: Future = field(default_factory=Future)
    step: int = 0
    steps: int = 0
    on_step: Callable[[Ticket], None] | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)

    def cancel(self) -> None:
        """Leave the batch at the next step (or never enter it)."""
        self.cancelled = True


@dataclass
class _Lane:
    ticket: Ticket
    resolved: Resolved
    plan: SamplerPlan
    latent: np.ndarray  # (1, C, T, F)
    prev_x0: np.ndarray
    conditions: dict[str, np.ndarray]  # batch of one
    neighbours: list[dict]
    edited: EditedBatch | None
    windows: WindowPlan | None
    prep_s: float
    admitted: float
    waited_s: float  # from submit to admission
    step: int = 0

    def rows(self) -> list[int | None]:
        """The lane's rows in a tick: its windows, or None for the whole latent."""
        return list(range(len(self.windows))) if self.windows is not None else [None]

    def row_frames(self, window: int | None) -> int:
        return self.windows.length if window is not None else self.latent.shape[2]


class StepBatcher:
    """Step-level batching over one engine; one thread calls :meth:`run` (or :meth:`tick`), any thread
    calls :meth:`submit`.

    ``slots``: requests denoised together; ``mode``: see ``MODES``; ``fill_wait_s`` (mode "request"):
    how long an empty batch waits for more requests before it starts with fewer than ``slots``.
    """

    def __init__(self, engine: Engine, slots: int = 4, mode: str = "step", fill_wait_s: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; valid: {', '.join(MODES)}")
        if slots < 1:
            raise ValueError(f"slots={slots} must be at least 1")
        self.engine, self.slots, self.mode, self.fill_wait_s = engine, slots, mode, fill_wait_s
        self._queue: deque[Ticket] = deque()
        self._lanes: list[_Lane] = []
        self._wake = threading.Condition()
        #: Lane steps run so far: the steps/s counter.
        self.steps_run = 0

    # -- any thread ---------------------------------------------------------------------

    def submit(self, request: Request, on_step: Callable[[Ticket], None] | None = None) -> Ticket:
        ticket = Ticket(request, on_step=on_step)
        with self._wake:
            self._queue.append(ticket)
            self._wake.notify_all()
        return ticket

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def active(self) -> int:
        return len(self._lanes)

    # -- the batching thread --------------------------------------------------------------

    def run(self, stop: threading.Event, idle_wait_s: float = 0.2) -> None:
        """Tick until ``stop`` is set, sleeping while there is nothing to do."""
        while not stop.is_set():
            if not self.tick():
                with self._wake:
                    if not self._queue and not stop.is_set():
                        self._wake.wait(idle_wait_s)

    def run_until_idle(self) -> None:
        while self.tick():
            pass

    def tick(self) -> bool:
        """Admit, run one step of every lane, finish the lanes that are done; False when idle."""
        self._drop_cancelled()
        self._admit()
        if not self._lanes:
            return bool(self._queue)
        self._step_all()
        for lane in list(self._lanes):
            if lane.step >= len(lane.plan):
                self._lanes.remove(lane)
                self._finish(lane)
        return True

    def _drop_cancelled(self) -> None:
        with self._wake:
            for ticket in [t for t in self._queue if t.cancelled]:
                self._queue.remove(ticket)
                ticket.future.cancel()
        for lane in [lane for lane in self._lanes if lane.ticket.cancelled]:
            self._lanes.remove(lane)
            lane.ticket.future.cancel()

    def _admit(self) -> None:
        with self._wake:
            if self.mode == "request":
                if self._lanes or not self._queue:
                    return
                oldest = self._queue[0].submitted
                if len(self._queue) < self.slots and time.monotonic() - oldest < self.fill_wait_s:
                    self._wake.wait(max(0.0, self.fill_wait_s - (time.monotonic() - oldest)))
                    if len(self._queue) < self.slots and time.monotonic() - oldest < self.fill_wait_s:
                        return
            taken = []
            while self._queue and len(self._lanes) + len(taken) < self.slots:
                taken.append(self._queue.popleft())
        for ticket in taken:
            self._start(ticket)

    def _start(self, ticket: Ticket) -> None:
        engine = self.engine
        # The future stays pending until the result is set, so cancelling it works in a lane too.
        if ticket.cancelled or ticket.future.cancelled():
            ticket.future.cancel()
            return
        try:
            waited = time.monotonic() - ticket.submitted
            t0 = time.perf_counter()
            resolved = engine.planner.resolve_all([ticket.request])
            conditions, neighbours, _ = engine._conditions(resolved)
            plan, latent, edited = engine._starting_point(resolved)
            r = resolved[0]
            lane = _Lane(
                ticket,
                r,
                plan,
                latent,
                np.zeros_like(latent),
                conditions,
                neighbours[0],
                edited,
                r.windows() if r.windowed else None,
                time.perf_counter() - t0,
                time.perf_counter(),
                waited,
            )
        except Exception as exc:  # a request that cannot start fails alone
            _settle(ticket.future, exception=exc)
            return
        ticket.steps = len(plan)
        if not len(plan):  # a strength too small for one step: the start clip as encoded
            self._finish(lane)
            return
        self._lanes.append(lane)

    def _step_all(self) -> None:
        """One step of every lane: its rows grouped by latent length, one graph call per group (at
        most ``max(slots, WINDOWS_PER_CALL)`` rows), window outputs blended as the windowed loop does."""
        runner = self.engine.denoiser.runner
        outputs = {}
        for lane in self._lanes:
            if lane.windows is not None:
                outputs[id(lane)] = (np.zeros_like(lane.latent), np.zeros_like(lane.latent))
        groups: dict[int, list[tuple[_Lane, int | None]]] = {}
        for lane in self._lanes:
            for window in lane.rows():
                groups.setdefault(lane.row_frames(window), []).append((lane, window))
        per_call = max(self.slots, WINDOWS_PER_CALL)
        for rows in groups.values():
            for first in range(0, len(rows), per_call):
                chunk = rows[first : first + per_call]
                out_latent, out_x0 = runner.run(self._feeds(chunk))
                for j, (lane, window) in enumerate(chunk):
                    if window is None:
                        outputs[id(lane)] = (out_latent[j : j + 1], out_x0[j : j + 1])
                        continue
                    frames = lane.windows.indices[window]
                    weight = lane.windows.weights[window].astype(np.float32)[:, None]
                    latent, x0 = outputs[id(lane)]
                    latent[0][:, frames] += weight * out_latent[j]
                    x0[0][:, frames] += weight * out_x0[j]
        for lane in self._lanes:
            lane.latent, lane.prev_x0 = outputs[id(lane)]
            if lane.edited is not None:
                lane.latent = lane.edited.known.impose(lane.latent, *levels_after_steps(lane.plan)[lane.step])
            lane.step += 1
            self.steps_run += 1
            lane.ticket.step = lane.step
            if lane.ticket.on_step is not None:
                lane.ticket.on_step(lane.ticket)

    @staticmethod
    def _feeds(chunk: list[tuple[_Lane, int | None]]) -> dict[str, np.ndarray]:
        def part(lane: _Lane, window: int | None, array: np.ndarray) -> np.ndarray:
            return array[0] if window is None else array[0][:, lane.windows.indices[window]]

        feeds = {
            "latent": np.stack([part(lane, w, lane.latent) for lane, w in chunk]),
            "prev_x0": np.stack([part(lane, w, lane.prev_x0) for lane, w in chunk]),
        }
        for name in chunk[0][0].conditions:
            # A timeline's conditions have a row per window; others one row.
            feeds[name] = _stack_padded([lane.conditions[name][_row(lane, w)] for lane, w in chunk])
        per_step = [step_feeds(lane.plan, lane.step, 1) for lane, _ in chunk]
        for name in ("timestep", "coefs"):
            feeds[name] = np.concatenate([s[name] for s in per_step])
        return feeds

    def _finish(self, lane: _Lane) -> None:
        engine, r = self.engine, lane.resolved
        t1 = time.perf_counter()
        try:
            audio = engine._decode(engine.runners["decoder"], [r], lane.latent)[0, : r.samples]
            if lane.edited is not None:
                audio = engine._spliced(lane.edited, 0, r, audio)
            timings = {
                "prepare_s": lane.prep_s,
                "denoise_s": t1 - lane.admitted,
                "decode_s": time.perf_counter() - t1,
                "queued_s": lane.waited_s,
            }
            result = engine._clip_result(r, audio, lane.conditions, 0, lane.neighbours, timings)
        except engine._run_errors as exc:
            result = engine._result(r, None, lane.neighbours, error=f"the clip failed: {str(exc)[:200]}")
        except Exception as exc:
            _settle(lane.ticket.future, exception=exc)
            return
        _settle(lane.ticket.future, result=result)

    def fail_all(self) -> None:
        """Fail every lane (a step raised what no lane's own error explains); queued requests stay."""
        lanes, self._lanes = self._lanes, []
        for lane in lanes:
            _settle(lane.ticket.future, exception=RuntimeError("a denoising step failed; see the service log"))


def _settle(future: Future, result=None, exception: BaseException | None = None) -> None:
    """Set a future's outcome unless someone cancelled it meanwhile."""
    try:
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


def _row(lane: _Lane, window: int | None) -> int:
    return window if window is not None and len(lane.conditions["guidance"]) > 1 else 0


def _stack_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Rows of one condition stacked, a shorter context padded with zeros (a padded mask is False,
    so the padding is attended to by no one): neighbours of requests with different k share a call."""
    longest = max(a.shape[0] for a in arrays) if arrays[0].ndim else 0
    if all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    out = np.zeros((len(arrays), longest, *arrays[0].shape[1:]), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[i, : a.shape[0]] = a
    return out


__all__ = ["MODES", "StepBatcher", "Ticket"]
