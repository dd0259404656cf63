"""The export manifest (docs/ARCHITECTURE.md, "Exports"): what the runtime trusts.

Every model file listed gets its sha256 (``onnx_entry``; TensorRT engines in
``export.tensorrt_build``), and every ONNX file carries the S2I stamp in its metadata_props
(``write_onnx(..., metadata=runtime.model.manifest.export_stamp(...))``, or ``stamp_onnx_file`` for
a file another tool wrote): ``runtime.model.manifest.load_export_manifest`` refuses any file
without them, whatever its precision.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch

from export.onnx_export import describe_io
from runtime.artifacts import sha256_file
from runtime.frontend import FrontEndConfig
from runtime.model.manifest import EXPORT_FORMAT, EXPORT_VERSION
from trainer.models import DenseGenerator


def dropout_spec(generator: DenseGenerator) -> list[dict[str, Any]]:
    """The mask inputs: ``[{"input": "mask0", "p": 0.15, "channels": C0}, ...]``."""
    return [{"input": f"mask{i}", "p": float(p), "channels": int(c)}
            for i, (p, c) in enumerate(zip(generator.dropout_p, generator.mask_channels,
                                           strict=True))]


def onnx_entry(path: Path, precision: str) -> dict[str, Any]:
    return {"file": path.name, "sha256": sha256_file(path), "precision": precision,
            "backend": "onnx", **describe_io(path)}


def versions() -> dict[str, str]:
    return {"python": platform.python_version(), "torch": torch.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def build_manifest(*, state: dict[str, Any], checkpoint: Path, dropout: list[dict[str, Any]],
                   opset: int, models: dict[str, dict[str, Any]], parity: dict[str, Any],
                   tensorrt: dict[str, Any], batch_sizes: list[int]) -> dict[str, Any]:
    return {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
        "front_end": FrontEndConfig.from_dict(state["front_end"]).to_dict(),
        "embedding_dim": int(state["embedding_dim"]),
        "width": float(state["width"]), "classes": list(state.get("classes") or []),
        "opset": opset, "dropout": dropout, "batch_sizes": batch_sizes,
        "models": models, "versions": versions(), "tensorrt": tensorrt,
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint),
                       "stage": state.get("stage"), "epoch": state.get("epoch"),
                       "step": state.get("step")},
        "parity": parity,
    }
