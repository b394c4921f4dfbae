"""Export side: ONNX graphs, fp16 conversion, TensorRT plans, bundles (needs the ``export`` extra)."""
