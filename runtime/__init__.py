"""S2I edge runtime: numpy + ONNX Runtime/TensorRT + ZeroMQ + PyAudio. Never imports torch."""
