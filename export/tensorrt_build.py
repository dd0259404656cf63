"""TensorRT engines from the exported ONNX graphs (only where TensorRT and a GPU exist).

One optimisation profile per engine over the runtime's batch sizes (min = 1, the
runtime's single-clip encode; opt = the middle one, e.g. K MC samples; max = the largest).
A timing cache file is loaded before and saved after every build, so rebuilding (or
building the FP16 twin) is quick.
FP16: TensorRT 10.x sets ``BuilderFlag.FP16`` on the FP32 graph; TensorRT 11 has no such
flag (networks are strongly typed), so the FP16 engine is built from the FP16 ONNX graph
(``--fp16``) with a strongly typed network. Nothing here runs without a CUDA GPU.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from runtime.artifacts import atomic_write_bytes, sha256_file
from runtime.errors import S2IError, first_line
from runtime.model.gpu_env import cuda_device_info, tensorrt_unavailable_reason
from runtime.model.precision import model_file, model_key

ENGINE_GRAPHS = ("encoder", "generator")          # the fused translator stays ONNX-only
WORKSPACE_BYTES = 2 << 30


def default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "s2i" / "tensorrt-timing.cache"


def why_no_tensorrt() -> str | None:
    """None when engines can be built here, else one line saying why not."""
    return tensorrt_unavailable_reason()


def has_fp16_flag() -> bool:
    import tensorrt as trt
    return hasattr(trt.BuilderFlag, "FP16")


def build_engines(folder: Path, models: dict[str, dict[str, Any]], batch_sizes: list[int],
                  timing_cache: Path | None = None
                  ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Build ``<graph>.plan`` (and ``<graph>.fp16.plan`` when the FP16 ONNX exists) for the
    encoder and generator, each on its own: one that fails to build is listed in
    ``tensorrt["engines"]`` with its reason and the others are kept. Returns (manifest
    ``models`` entries, manifest ``tensorrt``)."""
    reason = why_no_tensorrt()
    if reason:
        return {}, {"built": False, "reason": reason}
    import tensorrt as trt

    cache_path = timing_cache or default_timing_cache()
    lo, hi = 1, batch_sizes[-1]   # min 1: the runtime encodes one clip at a time
    opt = batch_sizes[len(batch_sizes) // 2]
    entries: dict[str, dict[str, Any]] = {}
    failed: dict[str, dict[str, Any]] = {}
    for graph in ENGINE_GRAPHS:
        jobs = [("fp32", models[graph])]
        if model_key(graph, "fp16") in models:
            # TensorRT 10: FP16 flag on the FP32 graph; 11: the FP16 graph, strongly typed
            source = models[graph] if has_fp16_flag() else models[model_key(graph, "fp16")]
            jobs.append(("fp16", source))
        for precision, onnx_entry in jobs:
            name = model_file(graph, precision, tensorrt=True)
            key = model_key(graph, precision, tensorrt=True)
            try:   # one engine failing (e.g. FP16 on this GPU) does not stop the others
                plan = _build_one(trt, folder / onnx_entry["file"], onnx_entry, precision,
                                  (lo, opt, hi), cache_path)
            except Exception as exc:  # noqa: BLE001 - TensorRT raises RuntimeError/TypeError
                failed[key] = {"kept": False, "reason": "build failed: " + first_line(
                    exc, with_type=not isinstance(exc, S2IError))}
                continue
            atomic_write_bytes(folder / name, plan)
            entries[key] = {"file": name, "sha256": sha256_file(folder / name),
                            "precision": precision, "backend": "tensorrt",
                            "source": onnx_entry["file"],
                            "profile": {"min": lo, "opt": opt, "max": hi},
                            "inputs": onnx_entry["inputs"], "outputs": onnx_entry["outputs"]}
    info = {"built": bool(entries), "engines": failed, "tensorrt": trt.__version__,
            **cuda_device_info(),
            "timing_cache": str(cache_path),
            "fp16_mode": "BuilderFlag.FP16" if has_fp16_flag() else "strongly typed FP16 graph"}
    return entries, info


def _attach_timing_cache(config: Any, cache_path: Path) -> None:
    """Load the timing cache file; one from another TensorRT/GPU (or damaged) is replaced
    by an empty cache rather than failing the build."""
    try:
        cached = cache_path.read_bytes() if cache_path.is_file() else b""
        if config.set_timing_cache(config.create_timing_cache(cached), False):
            return
    except Exception:  # noqa: BLE001 - TensorRT raises plain RuntimeError/TypeError here
        pass
    config.set_timing_cache(config.create_timing_cache(b""), False)


def _build_one(trt: Any, onnx_path: Path, entry: dict[str, Any], precision: str,
               profile_sizes: tuple[int, int, int], cache_path: Path) -> bytes:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if not has_fp16_flag() and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        # TensorRT 11: strongly typed networks; the graph's own types decide the precision
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise S2IError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision == "fp16" and has_fp16_flag():
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    lo, opt, hi = profile_sizes
    for spec in entry["inputs"]:
        tail = tuple(int(d) for d in spec["shape"][1:])
        profile.set_shape(spec["name"], (lo, *tail), (opt, *tail), (hi, *tail))
    config.add_optimization_profile(profile)
    _attach_timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise S2IError(f"TensorRT failed to build an engine from {onnx_path.name} "
                       "(see the TensorRT log above)")
    try:
        atomic_write_bytes(cache_path, bytes(config.get_timing_cache().serialize()))
    except OSError:
        pass  # the cache only saves time; an unwritable cache folder is not an error
    return bytes(serialized)
