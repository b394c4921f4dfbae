"""Fused fp16 denoiser graphs for CUDA: onnxruntime's transformer optimizer applied to the UNet.

The exported denoiser is unfused: attention is separate MatMul/Softmax nodes, GroupNorm is
decomposed into reductions, convolutions are NCHW. onnxruntime's optimizer for diffusion
UNets replaces them with its CUDA kernels: MultiHeadAttention (flash / memory-efficient
attention), GroupNorm and SkipGroupNorm (NHWC, SiLU folded in), BiasSplitGelu, BiasAdd and
NhwcConv. Those kernels exist only in the CUDA provider, so the fused graph is a CUDA-only
variant (``StageSpec.fused_file``); ``cpu_kernels_only`` keeps to the fusions that also have
CPU kernels (attention, layer norms), which is how parity is tested without a GPU.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Fusions with CUDA kernels only; ``cpu_kernels_only`` turns them off.
CUDA_ONLY_FUSIONS = (
    "enable_nhwc_conv",
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_bias_add",
    "enable_packed_qkv",
    "enable_packed_kv",
)
#: The ops the fusions produce, counted in the export log and checked by tests.
FUSED_OPS = (
    "MultiHeadAttention",
    "GroupNorm",
    "SkipGroupNorm",
    "NhwcConv",
    "BiasSplitGelu",
    "BiasAdd",
    "LayerNormalization",
    "SkipLayerNormalization",
)


def _num_heads_from_reshape(self, reshape_q, is_torch2: bool = False) -> int:
    """Attention heads read from the Q reshape's target shape (0 when not found).

    Replaces onnxruntime 1.32's reader, which calls ``int()`` on a one-element array: an error
    under NumPy 2, so no attention was fused in torch-2 exported graphs.
    """
    if is_torch2:
        parent = self.model.get_parent(reshape_q, 1)
        if parent is None or parent.op_type != "Concat" or len(parent.input) != 4:
            return 0
        value = self.model.get_constant_value(parent.input[2])
        heads = value.reshape(-1)[0] if isinstance(value, np.ndarray) and value.size == 1 else 0
    else:
        value = self.model.get_constant_value(reshape_q.input[1])
        heads = value[2] if isinstance(value, np.ndarray) and value.shape == (4,) else 0
    return int(heads) if heads > 0 else 0


def _patch_attention_fusion() -> None:
    # onnxruntime's transformer tools import their modules by bare name (they put their own folder
    # on sys.path), so the class to patch lives under that name.
    import onnxruntime.transformers.optimizer  # noqa: F401 - loads the fusion modules

    for name in ("fusion_attention_unet", "onnxruntime.transformers.fusion_attention_unet"):
        module = sys.modules.get(name)
        if module is not None:
            module.FusionAttentionUnet.get_num_heads = _num_heads_from_reshape


def fuse_denoiser(
    src: str | Path,
    dst: str | Path,
    *,
    fp16: bool = True,
    cpu_kernels_only: bool = False,
    fp32_outside: tuple[str, ...] = ("/unet/",),
) -> dict[str, int]:
    """Write the fused copy of the fp32 denoiser ``src`` to ``dst``; returns fused-op counts.

    With ``fp16``, the UNet runs in fp16 and every node outside ``fp32_outside`` (guidance and
    the sampler update) stays fp32, as in the unfused fp16 variant; inputs and outputs stay fp32.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    from .fp16 import FRAGILE_OPS, dedupe_nodes
    from .onnx_export import save_onnx

    _patch_attention_fusion()
    for name in ("onnxruntime.transformers", "fusion_base", "onnx_model"):
        logging.getLogger(name).setLevel(logging.WARNING)
    src, dst = Path(src), Path(dst)
    outside = {
        n.name for n in onnx.load(str(src), load_external_data=False).graph.node if not n.name.startswith(fp32_outside)
    }
    options = FusionOptions("unet")
    if cpu_kernels_only:
        for flag in CUDA_ONLY_FUSIONS:
            setattr(options, flag, False)
    model = optimize_model(
        str(src),
        model_type="unet",
        opt_level=0,
        optimization_options=options,
        use_gpu=not cpu_kernels_only,
        only_onnxruntime=False,
    )
    counts = {op: n for op, n in model.get_fused_operator_statistics().items() if n}
    if fp16:
        keep = [n.name for n in model.model.graph.node if n.name in outside]
        # The fused normalisations accumulate in fp32 inside their kernels; the decomposed ones
        # that remain stay fp32 as in the unfused variant.
        blocked = [op for op in FRAGILE_OPS if op not in ("GroupNormalization", "LayerNormalization")]
        model.convert_float_to_float16(keep_io_types=True, op_block_list=blocked, node_block_list=keep)
        dedupe_nodes(model.model.graph)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_onnx(model.model, dst)
    log.info("fused denoiser %s: %s", dst, ", ".join(f"{n} {op}" for op, n in counts.items()) or "nothing fused")
    return counts
