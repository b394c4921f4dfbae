"""The service without HTTP: accept a clip request (checked whole, stored durably), make its clips with
step-level batching, write them to the library as ``reaudio generate`` does, report progress, cancel.

Three threads: the caller's (``accept``, ``cancel``, ``status``), the batcher's (denoising steps), and
the coordinator's (moving stored jobs into the batcher, ranking candidates, writing files, timeouts).
A request that fails fails its job alone; nothing a request holds can stop the threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from reaudio.engine.audio.postprocess import PostProcess
from reaudio.engine.bundle.default_model import resolve_bundle
from reaudio.engine.bundle.manifest import BUNDLE_MANIFEST, sha256_file
from reaudio.engine.jobs.candidates import Ranked, expand, rank
from reaudio.engine.jobs.generate_job import (
    GenerateJob,
    JobSummary,
    Producer,
    candidates_for,
    plan_clips,
    request_for,
    write_clip,
)
from reaudio.engine.jobs.library import Library
from reaudio.engine.pipeline import Engine
from reaudio.engine.step_batching import StepBatcher, Ticket

from .intake import Intake, RequestInvalid
from .job_store import FINAL, ClipIdTaken, IdempotencyConflict, Job, JobStore

log = logging.getLogger(__name__)

#: Where the service keeps its state inside the library folder.
STATE_FOLDER = ".serve"


@dataclass(frozen=True)
class ServiceConfig:
    """What ``reaudio serve`` runs with (``defaults``: job-wide values of the per-clip settings, by name)."""

    library: Path
    bundle: Path | None = None
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    slots: int = 4
    batching: str = "step"
    fill_wait_s: float = 0.5
    queue_max: int = 64
    job_timeout_s: float = 600.0
    max_upload_bytes: int = 32 << 20
    audio_format: str = "wav"
    subtype: str = "PCM_16"
    postprocess: PostProcess = field(default_factory=PostProcess)
    audio_root: Path | None = None
    defaults: dict = field(default_factory=dict)


class QueueFull(RuntimeError):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the queue is full; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class NotCancellable(RuntimeError):
    pass


@dataclass
class _Running:
    job: Job
    clips: list  # the job's clips still to make (generate_job.Clip)
    keys: list[str]  # every clip of the job, made before or now: its entries, in order
    requests: list
    counts: list[int]
    tickets: list[Ticket]
    started: float = field(default_factory=time.monotonic)
    cancel: bool = False


class ClipService:
    """One engine, one library, one durable queue. ``start()`` the threads, ``stop()`` them."""

    def __init__(self, config: ServiceConfig, engine: Engine | None = None, batcher=None) -> None:
        """``batcher``: where denoising runs (default: a :class:`StepBatcher` on this engine; Ray Serve's
        ingress passes its replicas'). The engine checks requests and ranks candidates either way."""
        self.config = config
        self.bundle = resolve_bundle(config.bundle) if engine is None else engine.bundle
        self.library = Library(config.library, config.audio_format, subtype=config.subtype)  # locked: ours alone
        try:
            state = self.library.folder / STATE_FOLDER
            self.uploads = state / "uploads"
            self.store = JobStore(state / "jobs.sqlite")
            self.engine = engine or Engine.from_bundle(
                self.bundle,
                backend=config.backend,
                threads=config.threads,
                precision=config.precision,
                audio_root=config.audio_root,
            )
        except BaseException:
            self.library.close()
            raise
        self.job = GenerateJob(
            prompts=state / "requests",
            out=self.library.folder,
            bundle=self.bundle,
            batch_size=config.slots,
            audio_format=config.audio_format,
            subtype=config.subtype,
            backend=self.engine.backend,
            precision=config.precision,
            postprocess=config.postprocess,
            audio_root=config.audio_root,
            **config.defaults,
        )
        self.intake = Intake(self.job, self.engine, self.bundle, self.uploads, config.max_upload_bytes)
        self.bundle_hash = sha256_file(self.bundle / BUNDLE_MANIFEST)
        self.made_by = Producer.of(self.engine)
        self.batcher = batcher or StepBatcher(self.engine, config.slots, config.batching, config.fill_wait_s)
        self._running: dict[str, _Running] = {}
        self._finished: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._steps_seen: deque[tuple[float, int]] = deque(maxlen=64)
        #: (status, seconds from acceptance to the end) of recent jobs: the Retry-After estimate.
        self.ended: deque[tuple[str, float]] = deque(maxlen=100)
        #: Called with (status, seconds) when a job ends (the metrics).
        self.on_end: list = []

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        requeued = self.store.requeue_running()
        if requeued:
            log.info("%d job(s) of an earlier run are queued again", requeued)
        for name, target in (("batcher", self._run_batcher), ("coordinator", self._coordinate)):
            thread = threading.Thread(target=target, name=f"reaudio-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)
        self.store.close()
        self.library.close()

    def __enter__(self) -> ClipService:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- requests (any thread) --------------------------------------------------------------------

    def accept(
        self, record: dict, uploads: list[tuple[str, str, bytes]] | None = None, key: str | None = None
    ) -> tuple[Job, bool]:
        """Check a request whole and store it; (job, True), or (the earlier job, False) for a repeated
        ``key``. ``uploads``: (field, file name, bytes) of each uploaded clip (several ``reference`` ones
        may come). Raises :class:`RequestInvalid`, :class:`QueueFull`, ``IdempotencyConflict`` or
        ``ClipIdTaken``."""
        record, digest = self.intake.take(record, uploads or [])
        if key is not None:
            earlier = self.store.get_by_key(key)
            if earlier is not None:  # a retried POST: its job, whatever the queue holds now
                if earlier.body_sha256 != digest:
                    raise IdempotencyConflict(
                        f"Idempotency-Key {key!r} was used with another request (job {earlier.id})"
                    )
                return earlier, False
        _, clips, steps = self.intake.plan(record)
        if self.store.count("queued", "running") >= self.config.queue_max:
            raise QueueFull(self._retry_after())
        return self.store.add(record, record.get("id"), steps, len(clips), digest, key)

    def status(self, job_id: str) -> dict | None:
        job = self.store.get(job_id)
        if job is None:
            return None
        step, steps = job.steps if job.status == "done" else 0, job.steps
        running = self._running.get(job_id)
        if running is not None:
            step = sum(t.step for t in running.tickets)
        return {
            "id": job.id,
            "clip_id": job.clip_id,
            "status": job.status,
            "progress": {"step": step, "steps": steps},
            "prompt": job.record.get("prompt"),
            "accepted": job.accepted,
            "started": job.started,
            "finished": job.finished,
            "error": job.error,
            "clips": job.entries,
        }

    def audio_file(self, job_id: str, index: int = 0) -> Path | None:
        job = self.store.get(job_id)
        if job is None or job.status != "done" or not 0 <= index < len(job.entries):
            return None
        return self.library.folder / job.entries[index]["file"]

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (its slot frees at the next step)."""
        job = self.store.get(job_id)
        if job is None:
            raise KeyError(job_id)
        if job.status in FINAL:
            raise NotCancellable(f"job {job_id} is {job.status} already")
        running = self._running.get(job_id)
        if running is not None:
            running.cancel = True
            for ticket in running.tickets:
                ticket.cancel()
        self._end(job, "cancelled", [])
        return self.store.get(job_id)

    # -- numbers for the metrics ------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        return self.store.count("queued")

    @property
    def active_slots(self) -> int:
        return self.batcher.active

    def steps_per_second(self) -> float:
        """Denoising steps of all lanes per second, over the last ~10 s."""
        seen = [s for s in self._steps_seen if s[0] >= time.monotonic() - 10.0]
        if len(seen) < 2 or seen[-1][0] <= seen[0][0]:
            return 0.0
        return (seen[-1][1] - seen[0][1]) / (seen[-1][0] - seen[0][0])

    # -- checks ------------------------------------------------------------------------------------

    def _retry_after(self) -> int:
        """Seconds until a queue slot is likely free: the recent mean job time, at least 1."""
        recent = [seconds for status, seconds in self.ended if status == "done"][-20:]
        return max(1, round(sum(recent) / len(recent))) if recent else 5

    # -- the batcher's and the coordinator's threads ----------------------------------------------------

    def _run_batcher(self) -> None:
        while not self._stop.is_set():
            try:
                self.batcher.run(self._stop)
            except Exception:  # a step that raised fails its lanes' jobs; the batcher goes on
                log.exception("a denoising step failed")
                self.batcher.fail_all()

    def _coordinate(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch()
                self._collect(timeout=0.05)
                self._expire()
                self._steps_seen.append((time.monotonic(), self.batcher.steps_run))
            except Exception:
                log.exception("the coordinator hit an error; it goes on")
                time.sleep(0.1)

    def _dispatch(self) -> None:
        """Stored jobs into the batcher while it has fewer waiting than free slots (so a freed slot
        fills at the next step, and cancelling a queued job never has to reach into the batcher)."""
        while self.batcher.queued < self.config.slots:
            job = self.store.claim()
            if job is None:
                return
            try:
                self._begin(job)
            except Exception as exc:
                log.warning("job %s cannot run: %s", job.id, exc)
                self._end(job, "failed", [], str(exc)[:500])

    def _begin(self, job: Job) -> None:
        row = self.intake.row(job.record, job.clip_id)
        clips = plan_clips(self.job, [row])
        todo = [c for c in clips if not self.library.is_finished(c.key)]  # a restarted job keeps its clips
        if not todo:
            self._end(job, "done", [self.library.entries[c.key] for c in clips])
            return
        requests = [request_for(self.job, c) for c in todo]
        counts = [candidates_for(self.job, c.row) for c in todo]
        running = _Running(job, todo, [c.key for c in clips], requests, counts, [])
        self._running[job.id] = running
        for request in expand(requests, counts):
            ticket = self.batcher.submit(request)
            ticket.future.add_done_callback(lambda _, job_id=job.id: self._finished.put(job_id))
            running.tickets.append(ticket)

    def _collect(self, timeout: float) -> None:
        try:
            job_id = self._finished.get(timeout=timeout)
        except queue.Empty:
            return
        running = self._running.get(job_id)
        if running is None or not all(t.future.done() for t in running.tickets):
            return
        del self._running[job_id]
        if running.cancel:
            return  # cancel() stored it
        try:
            self._write(running)
        except Exception as exc:
            log.exception("job %s: writing its clips failed", job_id)
            self._end(running.job, "failed", [], str(exc)[:500])

    def _write(self, running: _Running) -> None:
        job, summary = running.job, JobSummary()
        results = iter(t.future for t in running.tickets)
        errors = []
        for clip, request, n in zip(running.clips, running.requests, running.counts):
            futures = [next(results) for _ in range(n)]
            got = []
            for future in futures:
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    errors.append(f"{clip.key}: {exc}")
                    continue
                got.append(future.result())
            if not got:
                continue
            ranked = rank(self.engine, request, got) if len(got) > 1 else Ranked(request, got, [None])
            write_clip(self.job, self.library, clip, ranked, self.bundle_hash, self.made_by, summary)
        errors += summary.failed
        entries = [self.library.entries[k] for k in running.keys if self.library.is_finished(k)]
        if errors:
            self._end(job, "failed", entries, "; ".join(errors)[:1000])
        else:
            self._end(job, "done", entries)

    def _expire(self) -> None:
        limit = self.config.job_timeout_s
        for running in list(self._running.values()):
            if not running.cancel and time.monotonic() - running.started > limit:
                running.cancel = True
                for ticket in running.tickets:
                    ticket.cancel()
                self._end(running.job, "failed", [], f"timed out after {limit:g} s")

    def _end(self, job: Job, status: str, entries: list[dict], error: str | None = None) -> None:
        self.store.finish(job.id, status, entries, error)
        seconds = time.time() - job.accepted
        self.ended.append((status, seconds))
        for call in self.on_end:
            call(status, seconds)


__all__ = [
    "ClipIdTaken",
    "ClipService",
    "IdempotencyConflict",
    "NotCancellable",
    "QueueFull",
    "RequestInvalid",
    "ServiceConfig",
]
