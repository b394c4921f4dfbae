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
import time
from pathlib import Path

import numpy as np

from ..pipeline import Engine, Result
from ..planning import Planner, Request
from ..stages.backends import check_precision
from .candidates import Ranked, check_rankable, expand, rank
from .generate_job import (
    Clip,
    GenerateJob,
    JobSummary,
    PreparedJob,
    Producer,
    prepare_job,
    write_clip,
)

log = logging.getLogger(__name__)
#: Request fields carried through the dataset (one row per clip).
_FIELDS = (
    "prompt",
    "duration",
    "seed",
    "steps",
    "guidance",
    "sampler",
    "k",
    "retrieval",
    "loop",
    "window",
    "overlap",
    "negative_prompt",
    "init_audio",
    "init",
    "strength",
    "id",
    "variation",
)


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


def _result_meta(result: Result) -> dict:
    return {
        "seed": result.seed,
        "steps": result.steps,
        "guidance": result.guidance,
        "sampler": result.sampler,
        "k": result.k,
        "retrieval": result.retrieval,
        "neighbours": result.neighbours,
        "timings": result.timings,
        "error": result.error,
        "sample_rate": result.sample_rate,
        "strength": result.strength,
        "init_from": result.init_from,
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
        return _run_prepared(ray, prepared, address, num_workers, num_gpus_per_worker, progress, echo, fail_once_marker)


def _run_prepared(
    ray, prepared: PreparedJob, address, num_workers, num_gpus_per_worker, progress, echo, fail_once_marker
) -> JobSummary:
    job, todo, summary, bundle = prepared.job, prepared.todo, prepared.summary, prepared.bundle
    if job.dry_run or not todo:
        if job.dry_run:
            echo(f"plan (ray, {num_workers} worker(s)): {len(todo)} of {len(prepared.clips)} clip(s) to generate")
        return summary
    # Settings errors surface here, before the cluster is touched, from the manifest (and the text
    # encoder where neighbours set durations): the workers' engines form the same batches.
    planner = Planner.for_bundle(bundle, audio_root=job.audio_root)
    manifest = planner.manifest
    if job.precision == "int8":  # said here, before any worker starts
        check_precision(bundle, manifest, "cpu", "int8")
    requests = {c.key: r for c, r in zip(todo, prepared.requests)}
    counts = {c.key: n for c, n in zip(todo, prepared.counts)}
    check_rankable(manifest, max(counts.values()), bundle)
    # The driver ranks candidates with the bundle's CLAP (text and audio encoders: cheap next to
    # denoising); loaded only when some clip has candidates to rank.
    ranker = (
        Engine.from_bundle(bundle, backend="cpu", threads=1, audio_root=job.audio_root)
        if max(counts.values()) > 1
        else None
    )
    ordered = expand(list(requests.values()), list(counts.values()))
    # Candidate j of clip `key` arrives under its own request id: map it back.
    owner = dict(zip((r.id for r in ordered), ((key, j) for key, n in counts.items() for j in range(n))))
    by_id = {r.id: r for r in ordered}
    plan = planner.plan_batches(ordered, job.batch_size)  # validates every request, too
    if manifest.licence is not None:
        echo(manifest.licence.notice())

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # our own bar counts written clips
    context.print_on_execution_start = False
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    by_key: dict[str, Clip] = {c.key: c for c in todo}
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
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="clip", disable=not progress, dynamic_ncols=True)
    start = time.perf_counter()
    tries: dict[str, dict[int, Result]] = {}
    try:
        for batch in outputs.iter_batches(batch_size=None, batch_format="numpy"):
            for rid, waveform, meta, backend in zip(batch["id"], batch["waveform"], batch["meta"], batch["backend"]):
                key, j = owner.get(rid, (None, 0))
                if key not in by_key or prepared.library.is_finished(key):
                    continue  # a retried batch re-delivered a clip that is already written
                tries.setdefault(key, {})[j] = _remote_result(by_id[rid], waveform, json.loads(meta))
                if len(tries[key]) < counts[key]:
                    continue
                arrived = tries.pop(key)
                got = [arrived[i] for i in range(counts[key])]
                ranked = rank(ranker, requests[key], got) if counts[key] > 1 else Ranked(requests[key], got, [None])
                made_by = Producer.from_manifest(manifest, str(backend))
                write_clip(job, prepared.library, by_key[key], ranked, prepared.bundle_hash, made_by, summary)
                bar.update(1)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _remote_result(request: Request, waveform, meta: dict) -> Result:
    return Result(
        request=request,
        waveform=waveform if meta["error"] is None else None,
        sample_rate=meta["sample_rate"],
        seed=meta["seed"],
        steps=meta["steps"],
        guidance=meta["guidance"],
        sampler=meta["sampler"],
        k=meta["k"],
        retrieval=meta["retrieval"],
        neighbours=meta["neighbours"],
        timings=meta["timings"],
        error=meta["error"],
        strength=meta["strength"],
        init_from=meta["init_from"],
    )
