"""Keeping benchmark rows apart: free one backend's memory before the next, and turn an
out-of-memory error into a skipped row with its reason instead of a lost run."""

from __future__ import annotations

import gc
import sys

from runtime.errors import first_line

OOM_MARKERS = ("out of memory", "outofmemory", "cudaerrormemoryallocation", "failed to allocate",
               "cuda_error_out_of_memory", "std::bad_alloc")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = f"{type(exc).__name__} {exc}".lower().replace(" ", "")
    return any(marker.replace(" ", "") in text for marker in OOM_MARKERS)


def skip_reason(exc: BaseException) -> str:
    """One line for the results: ``out of memory: ...`` or ``failed: TypeName: ...``."""
    kind = "out of memory" if is_out_of_memory(exc) else "failed"
    return f"{kind}: {first_line(exc, with_type=True)}"


def release_memory() -> None:
    """Collect garbage (ONNX Runtime sessions and TensorRT engines free their device memory
    when collected) and, where torch with CUDA is loaded, return its cached blocks."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
        except Exception:  # noqa: BLE001 - a broken CUDA context must not end the run
            pass
