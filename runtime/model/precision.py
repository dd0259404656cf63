"""Which graphs a precision uses and where it runs (no torch, no onnxruntime).

``fp32`` and ``fp16`` run on every backend; ``int8`` (``python -m export --int8``: static
quantization with QLinear/QDQ operators) is an ONNX Runtime CPU precision. BF16 is not offered:
ONNX Runtime's CPU provider has no bfloat16 convolution (docs/EXPORT.md, "BF16").
"""

from __future__ import annotations

from runtime.errors import S2IError

# The one table of precision x backend: each precision's manifest tag, file tag and the backends
# whose kernels run it. Export writes model keys and file names through ``model_key`` and
# ``model_file``; the runtime and the parity checks read them back through ``parse_model_key``.
BACKENDS = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu")
GPU_BACKENDS = frozenset({"tensorrt", "onnxruntime-cuda"})
RUNS_ON: dict[str, tuple[str, ...]] = {
    "fp32": BACKENDS,
    "fp16": BACKENDS,
    "int8": ("onnxruntime-cpu",),   # QLinear/QDQ operators: ONNX Runtime CPU kernels only
}
PRECISIONS = tuple(RUNS_ON)
# Where the log-mel front end runs: in the audio-in graph, on the host (runtime/frontend.py),
# or graph wherever the export has the audio-in graphs.
FEATURES = ("auto", "graph", "host")
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
    where = RUNS_ON[precision]
    if backend != "auto" and where != BACKENDS and backend not in where:
        raise S2IError(f"precision {precision} runs on {', '.join(where)} only (its operators "
                       f"have no {backend} kernels); use --backend {where[0]}")


def model_key(graph: str, precision: str, tensorrt: bool = False) -> str:
    """The manifest ``models`` key: ``generator``, ``generator_fp16``, ``encoder_int8``,
    ``encoder_fp16_trt``..."""
    return graph + ("" if precision == "fp32" else f"_{precision}") + ("_trt" if tensorrt
                                                                          else "")


def model_file(graph: str, precision: str, tensorrt: bool = False) -> str:
    """The file a model key names: ``generator.onnx``, ``generator.fp16.onnx``,
    ``encoder.int8.onnx``, ``encoder.plan``, ``encoder.fp16.plan``..."""
    return graph + ("" if precision == "fp32" else f".{precision}") + (".plan" if tensorrt
                                                                          else ".onnx")


def parse_model_key(key: str) -> tuple[str, str, bool]:
    """``generator_fp16_trt`` -> ``("generator", "fp16", True)``; no precision tag is FP32."""
    tensorrt = key.endswith("_trt")
    stem = key[:-len("_trt")] if tensorrt else key
    for precision in PRECISIONS:
        if precision != "fp32" and stem.endswith(f"_{precision}"):
            return stem[:-len(precision) - 1], precision, tensorrt
    return stem, "fp32", tensorrt


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
