"""``reaudio generate --ray``: the bulk job on a Ray cluster with Ray Data.

The prompt file becomes a dataset of the clips still to make (finished clips of
earlier runs are skipped before anything is scheduled), one row per batch as the
single-machine job would form it, so both give byte-identical audio; ``map_batches``
runs the batches through an actor pool holding one :class:`Engine` per GPU (or CPU slot);
the driver receives the waveforms as they stream out and writes them to the
same library as the single-machine job.

Exactly once: only the driver writes, and it writes a clip only if the library
does not hold it yet. A worker that dies loses its batch; Ray restarts the
actor and retries the batch, and a retried clip that had already arrived is
dropped at the driver, never written twice. Ray is an optional extra
(``pip install 'reaudio[ray]'``); this module imports it only when called.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields
from pathlib import Path

import numpy as np

from ..pipeline import Engine, Result
from ..planning import Request
from .candidates import expand, rank_stream
from .generate_job import GenerateJob, JobSummary, PreparedJob, Producer, prepare_job
from .job_loop import describe_plan, preflight, run_prepared

log = logging.getLogger(__name__)
#: Request fields carried through the dataset (one row per clip): all but explicit initial noise.
_FIELDS = tuple(f.name for f in fields(Request) if f.name != "initial_latent")


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ValueError("--ray needs Ray Data: pip install 'reaudio[ray]'") from exc
    return ray


def _row(request: Request) -> dict:
    return {name: getattr(request, name) for name in _FIELDS}


class EngineWorker:
    """One engine per actor; turns a batch of request rows into waveforms and their metadata.

    ``fail_once_marker`` is fault injection for tests: the first actor to see the
    marker file absent creates it and dies mid-batch, as a crashed worker would.
    """

    def __init__(
        self,
        bundle: str,
        backend: str = "auto",
        threads: int | None = None,
        fail_once_marker: str | None = None,
        audio_root: str | None = None,
        precision: str = "auto",
    ) -> None:
        # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU, so device 0 is the right one.
        self.engine = Engine.from_bundle(
            bundle, backend=backend, threads=threads, audio_root=audio_root, precision=precision
        )
        self.fail_once_marker = fail_once_marker

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Each dataset row is one planned engine batch (a JSON list of request rows).
        requests = [Request(**r) for planned in batch["requests"] for r in json.loads(planned)]
        results = self.engine.generate(requests, batch_size=len(requests))
        if self.fail_once_marker and not os.path.exists(self.fail_once_marker):
            Path(self.fail_once_marker).touch()
            os._exit(1)  # the batch is lost with the process, as in a real crash
        return {
            "id": np.array([r.request.id for r in results], dtype=object),
            "waveform": np.array(
                [r.waveform if r.ok else np.zeros(0, np.float32) for r in results] + [None], dtype=object
            )[:-1],
            "meta": np.array([json.dumps(_result_meta(r)) for r in results], dtype=object),
            "backend": np.array([self.engine.backend] * len(results), dtype=object),
        }


def run_job_on_ray(
    job: GenerateJob,
    address: str | None = None,
    num_workers: int = 2,
    num_gpus_per_worker: float = 0.0,
    progress: bool = True,
    echo=print,
    fail_once_marker: str | None = None,
) -> JobSummary:
    """Run ``job`` on Ray (``address`` None: start or join a local instance); resumable like :func:`run_job`."""
    ray = _import_ray()
    with prepare_job(job) as prepared:
        if prepared.todo:
            # Settings errors surface here, before the cluster is touched, from the manifest (and the
            # text encoder where neighbours set durations): the workers' engines form the same batches.
            preflight(prepared, prepared.planner, echo)
        if job.dry_run:
            describe_plan(prepared, echo, where=f", on Ray with {num_workers} worker(s)")
        if job.dry_run or not prepared.todo:
            return prepared.summary
        return _run_on_ray(ray, prepared, address, num_workers, num_gpus_per_worker, progress, fail_once_marker)


def _run_on_ray(
    ray, prepared: PreparedJob, address, num_workers, num_gpus_per_worker, progress, fail_once_marker
) -> JobSummary:
    job, bundle, planner = prepared.job, prepared.bundle, prepared.planner
    requests, counts = prepared.requests, prepared.counts
    # The driver ranks candidates with the bundle's CLAP (text and audio encoders: cheap next to
    # denoising); loaded only when some clip has candidates to rank.
    ranker = (
        Engine.from_bundle(bundle, backend="cpu", threads=1, audio_root=job.audio_root) if max(counts) > 1 else None
    )
    ordered = expand(requests, counts)
    position = {r.id: p for p, r in enumerate(ordered)}  # candidate j of a clip arrives under its own id
    plan = planner.plan_batches(ordered, job.batch_size)

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own bar counts written clips
    context.print_on_execution_start = False
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    batches = [{"requests": json.dumps([_row(ordered[i]) for i in indices])} for indices in plan]
    dataset = ray.data.from_items(batches, override_num_blocks=len(batches))
    outputs = dataset.map_batches(
        EngineWorker,
        fn_constructor_kwargs={
            "bundle": str(bundle.resolve()),
            "backend": job.backend,
            "threads": job.threads,
            "fail_once_marker": fail_once_marker,
            "precision": job.precision,
            "audio_root": str(job.audio_root.resolve()) if job.audio_root else None,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=num_workers),
        num_gpus=num_gpus_per_worker or None,
        num_cpus=1 if not num_gpus_per_worker else None,
        batch_format="numpy",
    )  # Ray Data restarts dead pool actors and retries their batches by default (max_restarts=-1).
    owner = [i for i, n in enumerate(counts) for _ in range(n)]
    producers: dict[int, Producer] = {}

    def arrived():
        for batch in outputs.iter_batches(batch_size=None, batch_format="numpy"):
            for rid, waveform, meta, backend in zip(batch["id"], batch["waveform"], batch["meta"], batch["backend"]):
                if rid not in position:
                    continue
                p = position[rid]
                producers.setdefault(owner[p], Producer.from_planner(planner, str(backend), prepared.database))
                yield p, _remote_result(ordered[p], waveform, json.loads(meta))

    return run_prepared(prepared, rank_stream(arrived(), requests, counts, ranker), producers.__getitem__, progress)


#: What a worker sends back of a result besides its request and waveform (all of it, by field).
_META = tuple(f.name for f in fields(Result) if f.name not in ("request", "waveform"))


def _result_meta(result: Result) -> dict:
    return {name: getattr(result, name) for name in _META}


def _remote_result(request: Request, waveform, meta: dict) -> Result:
    return Result(request=request, waveform=waveform if meta["error"] is None else None, **meta)
