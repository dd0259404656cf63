"""The model: export manifests, precisions, MC-dropout masks, backends (ONNX Runtime, TensorRT) and
the GPU environment."""
