"""What the GPU path needs, probed without torch: which ONNX Runtime build is installed, the
CUDA driver, cuda-python and TensorRT, each absence as one line naming its real cause.

Install matrix (pyproject extras; docs/GPU.md): exactly one ONNX Runtime build, ``[cpu]``
(onnxruntime) or ``[gpu]`` / ``[gpu-cu12]`` (onnxruntime-gpu for CUDA 13 / 12: the two
packages write the same ``onnxruntime/`` folder, so having both silently loses one);
TensorRT with cuda-python for the same CUDA major, ``[trt]`` (CUDA 13) or ``[trt-cu12]``.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
from types import ModuleType
from typing import Any

from runtime.errors import S2IError, first_line

ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu")
ORT_FIX = "pip uninstall -y onnxruntime onnxruntime-gpu && pip install -e '.[gpu]'"
TRT_INSTALL = "pip install -e '.[trt]' for CUDA 13, '.[trt-cu12]' for CUDA 12"
CUDA_PYTHON_PINS = {12: "cuda-python>=12.6,<13", 13: "cuda-python>=13,<14"}


def distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


# --- ONNX Runtime ------------------------------------------------------------------------

def onnxruntime_builds() -> dict[str, str]:
    """The ONNX Runtime distributions installed here: ``{name: version}``."""
    return {name: v for name in ORT_BUILDS if (v := distribution_version(name)) is not None}


def onnxruntime_conflict() -> str | None:
    """One line when the CPU and GPU builds are both installed (they overwrite each other's
    files: whichever pip wrote last wins, usually without CUDA), else None."""
    builds = onnxruntime_builds()
    if len(builds) < 2:
        return None
    both = " and ".join(f"{name} {version}" for name, version in builds.items())
    return (f"{both} are both installed and overwrite each other's onnxruntime/ folder; "
            f"keep one: {ORT_FIX}")


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, or one S2IError saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise S2IError("ONNX Runtime is not installed (or cannot load: "
                       f"{first_line(exc)}); install one build: pip install -e '.[cpu]', or "
                       "'.[gpu]' on an NVIDIA GPU machine") from exc
    return onnxruntime


_preloaded: dict[str, Any] = {}


def preload_cuda_libraries(ort: ModuleType) -> str | None:
    """Once per process, where this ONNX Runtime lists the CUDA provider and has
    ``preload_dlls`` (1.21+): load CUDA and cuDNN from the pip ``nvidia-*`` packages (or
    torch's) so that the provider finds them without LD_LIBRARY_PATH. Returns None, or why
    it did not run (never raises: the session load then says what is missing)."""
    if "done" in _preloaded:
        return _preloaded["reason"]
    reason = None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        reason = "no CUDAExecutionProvider"
    elif not hasattr(ort, "preload_dlls"):
        reason = f"onnxruntime {ort.__version__} has no preload_dlls (1.21+)"
    else:
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - it raises OSError/RuntimeError by platform
            reason = f"preload_dlls failed: {first_line(exc, with_type=True)}"
    _preloaded.update(done=True, reason=reason)
    return reason


def cuda_provider_reason(ort: ModuleType) -> str | None:
    """None when this ONNX Runtime lists the CUDA provider, else why not (the conflict, the
    CPU build, or a GPU build without it)."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        return None
    conflict = onnxruntime_conflict()
    if conflict:
        return conflict
    gpu = distribution_version("onnxruntime-gpu")
    if gpu is None:
        return (f"ONNX Runtime here is the CPU build (onnxruntime {ort.__version__}); for CUDA: "
                f"{ORT_FIX} for CUDA 13 ('.[gpu-cu12]' for CUDA 12)")
    return (f"onnxruntime-gpu {gpu} lists no CUDAExecutionProvider "
            f"(providers: {', '.join(ort.get_available_providers())})")


# --- CUDA driver, cuda-python ---------------------------------------------------------------

def _cuda_version(code: int) -> str:
    return f"{code // 1000}.{(code % 1000) // 10}"


def driver_cuda_version() -> str | None:
    """The CUDA version the installed NVIDIA driver supports (``"13.0"``), read from
    libcuda itself (no cuda-python needed); None without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return _cuda_version(version.value)


def _cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
    return cudart


def _major(version: str | None) -> int | None:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return None


def cuda_python_version() -> str | None:
    return distribution_version("cuda-bindings") or distribution_version("cuda-python")


def cuda_device_info() -> dict[str, Any]:
    """GPU name and CUDA runtime/driver versions via cuda-python; ``{"error": ...}`` when
    there is no usable CUDA GPU (or cuda-python is missing)."""
    try:
        cudart = _cudart()
    except ImportError:
        return {"error": "cuda-python is not installed (TensorRT here needs it to find the GPU "
                         f"and hold device buffers; {TRT_INSTALL} brings it)"}
    try:
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            return {"error": f"no CUDA device ({err})"}
        err, props = cudart.cudaGetDeviceProperties(0)
        _, runtime_version = cudart.cudaRuntimeGetVersion()
        _, driver_version = cudart.cudaDriverGetVersion()
    except Exception as exc:  # noqa: BLE001 - e.g. libcudart or the driver cannot be loaded
        return {"error": f"CUDA unusable ({first_line(exc, with_type=True)})"}
    ok = int(err) == 0
    name = props.name if ok else "?"
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return {"gpu": str(name).rstrip("\x00"), "cuda_runtime": _cuda_version(runtime_version),
            "cuda_driver": _cuda_version(driver_version),
            "compute_capability": f"{props.major}.{props.minor}" if ok else "?"}


# --- TensorRT ---------------------------------------------------------------------------------

def tensorrt_cuda_major() -> int | None:
    """The CUDA major the installed TensorRT wheels are built for (``tensorrt-cu13`` -> 13)."""
    for major in (13, 12, 11):
        if any(distribution_version(f"tensorrt-cu{major}{part}") for part in ("", "-libs")):
            return major
    return None


def _mismatch(driver: str | None) -> str:
    """What the CUDA majors of the driver, TensorRT and cuda-python say, when they disagree."""
    if driver is None:
        return "no NVIDIA driver found (libcuda.so.1 does not load)"
    notes = []
    trt_major, py_major = tensorrt_cuda_major(), _major(cuda_python_version())
    if trt_major and trt_major > (_major(driver) or 0):
        notes.append(f"TensorRT is built for CUDA {trt_major} but the driver supports CUDA "
                     f"{driver} (install the [trt-cu{_major(driver)}] variant or a newer driver)")
    if py_major and py_major > (_major(driver) or 0):
        pin = CUDA_PYTHON_PINS.get(_major(driver) or 0, "")
        notes.append(f"cuda-python {cuda_python_version()} needs a CUDA {py_major} driver, "
                     f"this one supports CUDA {driver} ({pin})")
    if trt_major and py_major and trt_major != py_major:
        notes.append(f"TensorRT (CUDA {trt_major}) and cuda-python {cuda_python_version()} "
                     f"(CUDA {py_major}) differ: {CUDA_PYTHON_PINS.get(trt_major, '')}")
    return "; ".join(notes) or f"the driver supports CUDA {driver}"


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can run here, else one line naming the first real cause: the
    package absent, present but unloadable (its CUDA libraries), cuda-python absent, no GPU
    or a CUDA major mismatch, or TensorRT failing to start on the GPU."""
    try:
        import tensorrt as trt
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] == "tensorrt":
            return f"the tensorrt package is not installed ({TRT_INSTALL})"
        return _unloadable(exc)
    except Exception as exc:  # noqa: BLE001 - OSError/ImportError from its shared libraries
        return _unloadable(exc)
    info = cuda_device_info()
    if info.get("error"):
        if "not installed" in info["error"]:
            return info["error"]
        return (f"no usable CUDA GPU for TensorRT: {info['error']}; "
                f"{_mismatch(driver_cuda_version())}")
    return _builder_reason(trt.__version__, info["gpu"])


def _unloadable(exc: BaseException) -> str:
    version = distribution_version("tensorrt") or tensorrt_cuda_major()
    return (f"tensorrt {version or ''} is installed but cannot load "
            f"({first_line(exc, with_type=True)}); {_mismatch(driver_cuda_version())}")


@functools.lru_cache(maxsize=4)
def _builder_reason(version: str, gpu: str) -> str | None:
    """TensorRT really starting on the GPU (a builder creates a CUDA context): cached."""
    import tensorrt as trt

    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None:
            raise RuntimeError("trt.Builder returned None")
    except Exception as exc:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError
        return (f"TensorRT {version} cannot start on {gpu} ({first_line(exc, with_type=True)}); "
                f"{_mismatch(driver_cuda_version())}")
    del builder
    return None


def environment() -> dict[str, Any]:
    """Everything above in one dict (for benchmarks and bug reports)."""
    try:
        ort = import_onnxruntime()
        providers: list[str] | str = list(ort.get_available_providers())
    except S2IError as exc:
        providers = str(exc)
    return {"onnxruntime_builds": onnxruntime_builds(), "onnxruntime_providers": providers,
            "onnxruntime_conflict": onnxruntime_conflict(),
            "preload_dlls": _preloaded.get("reason", "not called") if _preloaded
            else "not called",
            "driver_cuda": driver_cuda_version(), "cuda_python": cuda_python_version(),
            "cuda_device": cuda_device_info(), "tensorrt": distribution_version("tensorrt")
            or (f"cu{tensorrt_cuda_major()}" if tensorrt_cuda_major() else None),
            "tensorrt_cuda_major": tensorrt_cuda_major(),
            "tensorrt_unavailable": tensorrt_unavailable_reason()}
