"""The one generation loop of a ``reaudio generate`` job, for both runners.

The local runner (``bulk.py``) and the Ray runner (``ray_bulk.py``) differ only in where batches run:
each hands :func:`run_prepared` a source of ranked clips (:func:`~.candidates.rank_stream` over its
results). The checks before any work, the dry run's plan, the writer thread, the progress bar and
the summary are this module's, so both runners print, refuse and write alike.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable

from ..planning import Planner
from ..stages.backends import check_precision
from .candidates import Ranked, check_rankable
from .generate_job import PreparedJob, Producer, write_clip

#: A source of finished clips: (index into ``prepared.todo``, its ranked candidates).
RankedSource = Iterable[tuple[int, Ranked]]


def preflight(prepared: PreparedJob, planner: Planner, echo) -> None:
    """Every settings error before any work, a dry run's too; then the weights' licence, once."""
    job, manifest = prepared.job, planner.manifest
    if job.precision == "int8":
        check_precision(prepared.bundle, manifest, "cpu", "int8")
    planner.resolve_all(prepared.requests)
    check_rankable(manifest, max(prepared.counts), prepared.bundle)
    if manifest.licence is not None:
        echo(manifest.licence.notice())


def describe_plan(prepared: PreparedJob, echo, where: str = "") -> None:
    """The dry run's output: what would be made, where, and the first 50 files."""
    job, todo, summary = prepared.job, prepared.todo, prepared.summary
    echo(
        f"plan: {len(prepared.rows)} prompt(s) → {len(prepared.clips)} clip(s); {summary.skipped} already in "
        f"{job.out}, {len(todo)} to generate with bundle {prepared.bundle}, batch size {job.batch_size}{where}"
    )
    for clip in todo[:50]:
        echo(f"  {clip.file_name}  seed={clip.seed}  {clip.row.prompt!r}")
    if len(todo) > 50:
        echo(f"  … and {len(todo) - 50} more")


def run_prepared(prepared: PreparedJob, source: RankedSource, made_by: Callable[[int], Producer], progress: bool):
    """Write every clip ``source`` yields, as it comes, to the job's library; returns the summary.

    ``made_by(i)``: what engine made clip ``i`` (its backend and bundle facts, for the entry)."""
    job, todo, summary = prepared.job, prepared.todo, prepared.summary
    from tqdm import tqdm

    bar = tqdm(total=len(todo), unit="clip", disable=not progress, dynamic_ncols=True)
    writes: queue.Queue = queue.Queue(maxsize=2 * job.batch_size)
    failure: list[BaseException] = []

    def writer() -> None:
        # File encoding and writing overlap the next batch's generation.
        while (item := writes.get()) is not None:
            try:
                i, ranked, producer = item
                write_clip(job, prepared.library, todo[i], ranked, prepared.bundle_hash, producer, summary)
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
        for i, ranked in source:
            if failure:
                raise failure[0]
            writes.put((i, ranked, made_by(i)))
    finally:
        writes.put(None)
        thread.join()
        bar.close()
    if failure:
        raise failure[0]
    summary.seconds = time.perf_counter() - start
    return summary
