"""Which graphs a precision uses and where it runs (no torch, no onnxruntime).

``fp32`` and ``fp16`` run on every backend; ``int8`` (``python -m export --int8``: static
quantization with QLinear/QDQ operators) is an ONNX Runtime CPU precision. BF16 is not offered:
ONNX Runtime's CPU provider has no bfloat16 convolution (docs/EXPORT.md, "BF16").
"""

from __future__ import annotations

from runtime.errors import S2IError

PRECISIONS = ("fp32", "fp16", "int8")
CPU_ONLY = frozenset({"int8"})
BF16_REASON = ("bf16 is not offered: ONNX Runtime's CPU provider has no bfloat16 convolution "
               "(the ONNX Conv operator does not take bfloat16, and its CPU MatMul has no "
               "bfloat16 kernel), so a BF16 graph cannot run on the runtime's CPU path; use "
               "int8 for CPU speed (docs/EXPORT.md, BF16)")


def check_precision(precision: str, backend: str = "auto") -> None:
    """One clear line for a precision that does not exist or cannot run on ``backend``."""
    if precision == "bf16":
        raise S2IError(BF16_REASON)
    if precision not in PRECISIONS:
        raise S2IError(f"unknown precision '{precision}'; expected one of "
                       f"{', '.join(PRECISIONS)}")
    if precision in CPU_ONLY and backend not in ("auto", "onnxruntime-cpu"):
        raise S2IError(f"precision {precision} runs on onnxruntime-cpu only (its quantized "
                       f"operators have no {backend} kernels); use --backend onnxruntime-cpu")


def model_key(graph: str, precision: str, tensorrt: bool = False) -> str:
    """The manifest ``models`` key: ``generator``, ``generator_fp16``, ``encoder_int8``,
    ``encoder_fp16_trt``..."""
    return graph + ("" if precision == "fp32" else f"_{precision}") + ("_trt" if tensorrt
                                                                          else "")


def missing_hint(precision: str, tensorrt: bool) -> str:
    """What to do when an export lacks the graphs of ``precision``."""
    if tensorrt:
        return "export on a machine with TensorRT and a GPU"
    if precision == "fp16":
        return "re-export with --fp16"
    if precision == "int8":
        return ("re-export with --int8 (if it did, its quality gates failed: see the "
                "manifest's int8.reason)")
    return "re-export"
