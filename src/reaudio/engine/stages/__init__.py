"""Running a bundle's stage graphs: onnxruntime and TensorRT runners, backends, the tokenizer."""
