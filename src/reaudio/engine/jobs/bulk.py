"""The local runner of ``reaudio generate``: prompt file in, sound library out, resumable."""

from __future__ import annotations

import logging
import queue
import threading
import time

from ..pipeline import Engine
from .candidates import check_rankable, stream_ranked
from .generate_job import GenerateJob, JobSummary, PreparedJob, Producer, prepare_job, write_clip

log = logging.getLogger(__name__)


def run_job(job: GenerateJob, progress: bool = True, echo=print) -> JobSummary:
    """Run (or with ``dry_run`` describe) a bulk job; finished clips of earlier runs are skipped."""
    with prepare_job(job) as prepared:
        return _run_prepared(prepared, progress, echo)


def _run_prepared(prepared: PreparedJob, progress: bool, echo) -> JobSummary:
    job, todo, summary = prepared.job, prepared.todo, prepared.summary
    if todo:
        engine = Engine.from_bundle(
            prepared.bundle,
            backend=job.backend,
            device_id=job.device_id,
            threads=job.threads,
            precision=job.precision,
            cuda_graphs=job.cuda_graphs,
            audio_root=job.audio_root,
        )
        engine.planner.resolve_all(prepared.requests)  # every settings error before any work, a dry run's too
        check_rankable(engine.manifest, max(prepared.counts), engine.bundle)
        if engine.licence is not None:
            echo(engine.licence.notice())
    if job.dry_run:
        echo(
            f"plan: {len(prepared.rows)} prompt(s) → {len(prepared.clips)} clip(s); {summary.skipped} already in "
            f"{job.out}, {len(todo)} to generate with bundle {prepared.bundle}, batch size {job.batch_size}"
        )
        for clip in todo[:50]:
            echo(f"  {clip.file_name}  seed={clip.seed}  {clip.row.prompt!r}")
        if len(todo) > 50:
            echo(f"  … and {len(todo) - 50} more")
        return summary
    if not todo:
        return summary
    made_by = Producer.of(engine)

    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="clip", disable=not progress, dynamic_ncols=True)
    writes: queue.Queue = queue.Queue(maxsize=2 * job.batch_size)
    failure: list[BaseException] = []

    def writer() -> None:
        # File encoding and writing overlap the next batch's generation.
        while (item := writes.get()) is not None:
            try:
                clip, ranked = item
                write_clip(job, prepared.library, clip, ranked, prepared.bundle_hash, made_by, summary)
            except BaseException as exc:  # surfaced in the main thread
                failure.append(exc)
            finally:
                bar.update(1)
                elapsed = time.perf_counter() - start
                bar.set_postfix(clips_s=f"{bar.n / elapsed:.2f}", rtf=f"{summary.audio_seconds / elapsed:.2f}")

    start = time.perf_counter()
    thread = threading.Thread(target=writer, name="reaudio-writer", daemon=True)
    thread.start()
    try:
        for i, ranked in stream_ranked(engine, prepared.requests, prepared.counts, batch_size=job.batch_size):
            if failure:
                raise failure[0]
            writes.put((todo[i], ranked))
    finally:
        writes.put(None)
        thread.join()
        bar.close()
    if failure:
        raise failure[0]
    summary.seconds = time.perf_counter() - start
    return summary
