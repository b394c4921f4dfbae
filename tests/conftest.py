import os
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def realistic_audio(sample_rate: int, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A linear sweep, a noise burst with decay, and a quiet noise floor: (samples,) float32."""
    n = int(sample_rate * seconds)
    t = np.arange(n) / sample_rate
    f0, f1 = 60.0, 0.45 * sample_rate
    sweep = 0.3 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) / (2 * seconds) * t**2))
    burst = np.zeros(n)
    start, length = n // 3, n // 4
    burst[start : start + length] = rng.normal(0, 0.4, length) * np.exp(-np.linspace(0, 6, length))
    floor = rng.normal(0, 1e-4, n)
    return (sweep + burst + floor).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory):
    """A random `tiny` system, its database and its bundle (fp32 + fp16), made once per run.

    ``REAUDIO_TINY_ARTIFACTS`` names a folder already made by ``python -m reaudio.training.toy_bundle
    DIR --fp16``: the runtime-only test run (no torch) uses it instead of making one.
    """
    made = os.environ.get("REAUDIO_TINY_ARTIFACTS")
    if made:
        if not (Path(made) / "bundle" / "manifest.json").is_file():
            pytest.fail(
                f"REAUDIO_TINY_ARTIFACTS={made}: no bundle/manifest.json there; "
                "make it with `python -m reaudio.training.toy_bundle DIR --fp16`"
            )
        return Path(made)
    pytest.importorskip("torch", reason="the tiny bundle is made with torch (or set REAUDIO_TINY_ARTIFACTS)")
    from reaudio.training.toy_bundle import make

    out = tmp_path_factory.mktemp("tiny")
    make(out, fp16=True)
    return out


@pytest.fixture
def tiny_bundle(tiny_artifacts, tmp_path):
    """A private copy of the tiny bundle (tests may change its database)."""
    import shutil

    dst = tmp_path / "bundle"
    shutil.copytree(tiny_artifacts / "bundle", dst)
    return dst
