"""The local runner of ``reaudio generate``: prompt file in, sound library out, resumable."""

from __future__ import annotations

import logging

from ..pipeline import Engine
from .candidates import stream_ranked
from .generate_job import GenerateJob, JobSummary, Producer, prepare_job
from .job_loop import describe_plan, preflight, run_prepared

log = logging.getLogger(__name__)


def run_job(job: GenerateJob, progress: bool = True, echo=print) -> JobSummary:
    """Run (or with ``dry_run`` describe) a bulk job; finished clips of earlier runs are skipped."""
    with prepare_job(job) as prepared:
        if prepared.todo:
            engine = Engine.from_bundle(
                prepared.bundle,
                backend=job.backend,
                device_id=job.device_id,
                threads=job.threads,
                precision=job.precision,
                cuda_graphs=job.cuda_graphs,
                audio_root=job.audio_root,
            )
            preflight(prepared, engine.planner, echo)
        if job.dry_run:
            describe_plan(prepared, echo)
        if job.dry_run or not prepared.todo:
            return prepared.summary
        made_by = Producer.of(engine)
        ranked = stream_ranked(engine, prepared.requests, prepared.counts, batch_size=job.batch_size)
        return run_prepared(prepared, ranked, lambda i: made_by, progress)
