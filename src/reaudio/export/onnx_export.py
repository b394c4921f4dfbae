"""ONNX export of one stage, and torch-vs-onnxruntime parity checks."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reaudio.models.configs import FamilyConfig

from .contracts import StageContract, contract, stage_module

log = logging.getLogger(__name__)
DEFAULT_OPSET = 18


def export_stage(
    stage: str, cfg: FamilyConfig, models: dict[str, nn.Module], path: str | Path, opset: int = DEFAULT_OPSET
) -> StageContract:
    """Export ``stage`` to ``path`` with dynamic batch and length axes."""
    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use 17 or newer")
    spec = contract(stage, cfg)
    module = stage_module(stage, cfg, models).eval()
    # Trace at an odd length: lengths that are not multiples of the UNet's
    # downsampling factor must work, and a trace at a "nice" length can hide that.
    _, frames, _ = cfg.latent_shape()
    frames = frames + 1 if frames % 2 == 0 else frames
    args = spec.sample_inputs(cfg, batch=2, frames=frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=[s.name for s in spec.inputs],
            output_names=[s.name for s in spec.outputs],
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    consolidate_external_data(path)
    log.info("exported %s → %s (%.1f MB)", stage, path, path.stat().st_size / 1e6)
    return spec


#: Protobuf's hard limit is 2 GiB; stay clear of it.
EXTERNAL_DATA_BYTES = 1_800_000_000


def save_onnx(model, path: Path) -> None:
    """Save ``model``, moving weights into one ``<name>.data`` file when it is too big for protobuf."""
    import onnx

    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
            size_threshold=1024,
        )
    else:
        onnx.save_model(model, str(path))


def consolidate_external_data(path: Path) -> None:
    """Gather weights the exporter spread over one file per tensor (models > 2 GB) into one file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {
        entry.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    if not locations or locations == {path.name + ".data"}:
        return
    model = onnx.load(str(path))  # pulls every tensor back in
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=1024,
    )
    for name in locations - {path.name + ".data"}:
        (path.parent / name).unlink(missing_ok=True)


@dataclass(frozen=True)
class ParityResult:
    stage: str
    case: str
    output: str
    max_abs: float
    rel: float  # max |onnx − torch| / max |torch|


def ort_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(
    stage: str,
    cfg: FamilyConfig,
    models: dict[str, nn.Module],
    path: str | Path,
    cases: list[tuple[int, int]] = ((1, 16), (3, 39)),
    session=None,
) -> list[ParityResult]:
    """Compare the torch stage and its ONNX graph on random inputs at (batch, latent frames) cases."""
    spec = contract(stage, cfg)
    module = stage_module(stage, cfg, models).eval()
    session = session or ort_session(path)
    results = []
    for batch, frames in cases:
        args = spec.sample_inputs(cfg, batch=batch, frames=frames, tokens=5 + frames % 7, seed=batch * 100 + frames)
        with torch.no_grad():
            expected = module(*args)
        expected = expected if isinstance(expected, tuple) else (expected,)
        feeds = {s.name: a.numpy() for s, a in zip(spec.inputs, args)}
        actual = session.run([s.name for s in spec.outputs], feeds)
        for out_spec, e, a in zip(spec.outputs, expected, actual):
            e = e.numpy()
            if e.shape != a.shape:
                raise AssertionError(f"{stage}/{out_spec.name}: shape {a.shape} from ONNX, {e.shape} from torch")
            max_abs = float(np.abs(a.astype(np.float64) - e).max())
            scale = float(np.abs(e).max()) or 1.0
            results.append(
                ParityResult(stage, f"batch={batch} frames={frames}", out_spec.name, max_abs, max_abs / scale)
            )
    return results
