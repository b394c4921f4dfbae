"""fp16 variants of exported graphs for GPU backends, keeping fragile ops in fp32."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

log = logging.getLogger(__name__)

#: Normalisations and reductions whose fp16 round-off or overflow hurts audio quality.
FRAGILE_OPS = [
    "InstanceNormalization",
    "GroupNormalization",
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Exp",
    "Log",
    "Erf",
    "Range",
    "CumSum",
    "Min",
    "Max",
    "TopK",
    "Upsample",
]


def fp32_node_names(model: onnx.ModelProto, keep_fp16_scopes: tuple[str, ...]) -> list[str]:
    """Names of nodes outside ``keep_fp16_scopes`` (module-path prefixes of the exporter)."""
    return [n.name for n in model.graph.node if not n.name.startswith(keep_fp16_scopes)]


def convert_to_fp16(
    src: str | Path, dst: str | Path, *, fp16_scopes: tuple[str, ...] | None = None, extra_fp32_ops: tuple[str, ...] = ()
) -> Path:
    """Write an fp16 copy of ``src`` with float32 inputs and outputs.

    ``fp16_scopes`` limits fp16 to nodes under these module paths (e.g. the UNet
    inside the denoiser step, so guidance and the sampler update stay fp32).
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    # Its per-initializer INFO lines run to thousands for a large UNet.
    logging.getLogger("onnxruntime.transformers.float16").setLevel(logging.WARNING)
    model = onnx.load(str(src))
    node_block = fp32_node_names(model, fp16_scopes) if fp16_scopes else None
    converted = convert_float_to_float16(
        model,
        keep_io_types=True,
        op_block_list=FRAGILE_OPS + list(extra_fp32_ops),
        node_block_list=node_block,
    )
    from .onnx_export import save_onnx

    dst = Path(dst)
    save_onnx(converted, dst)
    log.info("fp16 variant %s (%.1f MB)", dst, dst.stat().st_size / 1e6)
    return dst
