"""PyTorch -> ONNX (+FP16) -> TensorRT: the files the runtime loads (see docs/EXPORT.md).

``export_translator(ExportConfig(checkpoint, out_dir, ...))`` is the one entry point;
``python -m export`` wraps it (its flags are ``ExportConfig``'s fields).
"""
