"""The decoder's signal stages take (audio, its log-mel): traced once, run by onnxruntime at other lengths."""

from __future__ import annotations

import io


def onnx_session(model, wav, mel):
    """``model`` exported with dynamic batch and length (traced on ``wav``, ``mel``), as an onnxruntime
    session with inputs "wav", "mel" and output "out"."""
    import onnxruntime as ort
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (wav, mel),
        buffer,
        input_names=["wav", "mel"],
        output_names=["out"],
        dynamic_axes={"wav": {0: "b", 1: "s"}, "mel": {0: "b", 1: "t"}, "out": {0: "b", 1: "s_out"}},
        opset_version=17,
        dynamo=False,
    )
    return ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
