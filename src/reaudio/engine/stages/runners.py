"""What every stage runner offers, and the error a backend raises when it cannot run here.

A leaf module: backends, the TensorRT runners and the denoising strategies all
depend on it, and it depends on none of them.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why and what to install."""


class Runner(Protocol):
    """One stage graph: NumPy feeds in, NumPy outputs out, in the order of the stage's outputs."""

    #: The dtype each input is fed as (the stage contract's).
    input_dtypes: dict[str, np.dtype]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...
