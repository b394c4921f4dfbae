"""reaudio's runtime engine: bundles in, sound libraries out, without torch.

Parts: ``bundle`` (the format), ``stages`` (runners and backends), ``denoising`` (schedule,
samplers, loop strategies), ``retrieval`` (the database), ``audio`` (front end and files),
``planning`` (requests to batches), ``pipeline`` (the engine), ``jobs`` (what the CLI runs).

This package must import with numpy and the runtime dependencies alone; it never
imports torch, transformers or the training side (a test enforces it).

The public API: ``from reaudio.engine import Engine, Request, Result``.
"""

from reaudio import __version__  # noqa: F401  (stated once, in the package root)

__all__ = ["Engine", "Request", "Result"]


def __getattr__(name: str):
    # Loaded on first use, so importing one engine module does not load onnxruntime.
    if name in __all__:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
