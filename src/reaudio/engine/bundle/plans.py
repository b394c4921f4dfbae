"""TensorRT plan cache naming and lookup (no TensorRT import needed).

Plans are per machine: their names carry the stage, precision, TensorRT version
and GPU, so a bundle copied to another machine never loads a foreign plan.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PLANS = "plans"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def plan_name(stage: str, precision: str, trt_version: str, gpu_name: str) -> str:
    """e.g. ``denoiser.fp16.trt10.8.0.nvidia-h100-80gb-hbm3.plan``."""
    return f"{stage}.{precision}.trt{trt_version}.{slug(gpu_name)}.plan"


@dataclass(frozen=True)
class PlanLookup:
    path: Path | None
    message: str


def find_plan(bundle: str | Path, stage: str, precision: str, trt_version: str, gpu_name: str) -> PlanLookup:
    """The plan for this machine, or None with a message naming what exists instead."""
    folder = Path(bundle) / PLANS
    wanted = folder / plan_name(stage, precision, trt_version, gpu_name)
    if wanted.is_file():
        return PlanLookup(wanted, f"using {wanted.name}")
    others = sorted(p.name for p in folder.glob(f"{stage}.{precision}.*.plan")) if folder.is_dir() else []
    if others:
        return PlanLookup(
            None,
            f"no {stage} plan for TensorRT {trt_version} on {gpu_name}; found plans for other "
            f"versions/GPUs ({', '.join(others)}): they will not be used; build one with `reaudio plans build`",
        )
    return PlanLookup(None, f"no {stage} plan yet; build one with `reaudio plans build`")
