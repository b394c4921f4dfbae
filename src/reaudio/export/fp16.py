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


def dedupe_nodes(graph) -> int:
    """Drop repeated identical nodes and rename clashing node names; returns how many were dropped.

    onnxruntime's fp16 converter can insert the same Cast (same input, same output
    name) twice when one tensor feeds two fp32-kept nodes; a graph defining a name
    twice does not load. The survivors are put back in topological order.
    """
    seen, names, kept = set(), set(), []
    for node in graph.node:
        key = node.SerializeToString(deterministic=True)  # op, inputs, outputs, attributes, name
        if key in seen:
            continue
        seen.add(key)
        if node.name in names:
            node.name = f"{node.name}_{len(kept)}"
        names.add(node.name)
        kept.append(node)
    dropped = len(graph.node) - len(kept)
    if dropped:
        ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
        ordered, pending = [], kept
        while pending:
            waiting = []
            for node in pending:
                if all(name in ready for name in node.input):
                    ordered.append(node)
                    ready.update(node.output)
                else:
                    waiting.append(node)
            if len(waiting) == len(pending):
                ordered += waiting  # subgraph references or cycles: leave as found
                break
            pending = waiting
        del graph.node[:]
        graph.node.extend(ordered)
    return dropped


def convert_to_fp16(
    src: str | Path,
    dst: str | Path,
    *,
    fp16_scopes: tuple[str, ...] | None = None,
    extra_fp32_ops: tuple[str, ...] = (),
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
    dedupe_nodes(converted.graph)
    from .onnx_export import save_onnx

    dst = Path(dst)
    save_onnx(converted, dst)
    log.info("fp16 variant %s (%.1f MB)", dst, dst.stat().st_size / 1e6)
    return dst
