"""reaudio's runtime engine: torch-free audio front end, sampler math and bundle schema.

This package must import with numpy and the runtime dependencies alone; it never
imports torch, transformers or the training side (a test enforces it).
"""

__version__ = "0.1.0"
