"""Parity: ONNX Runtime (and TensorRT) against PyTorch on the same inputs and masks.

Errors are RELATIVE (``max |got - want| / max |want|``): an untrained network's outputs are
~1e-7, so an absolute tolerance passes an engine that returns zeros. The reference's own
sensitivity is measured too (how much its images change with the input and with the
masks): a check on a network whose outputs do not depend on its inputs cannot see a mask
bound to the wrong input, and is reported as not informative.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from runtime.masks import draw_masks, ones_masks
from runtime.precision import parse_model_key
from trainer.calibrate import synthetic_spectrograms
from trainer.models import AudioEncoder, DenseGenerator

# Limits per precision: (metric, limit). "max" = max |got - want| / max |want| (the worst
# pixel), "rms" = rms(got - want) / rms(want). FP32 is held to the worst pixel. FP16 is held
# to the typical error: the input-sensitive test networks amplify a 1e-2 FP16 error in the
# embedding to ~0.4 at the worst pixel of the fused graph (rms 5e-2), while a broken graph
# (zeroed weight, swapped masks) gives max ~2, rms ~0.85 (docs/EXPORT.md, "Parity checks").
TOLERANCE: dict[str, tuple[str, float]] = {"fp32": ("max", 1e-3), "fp16": ("rms", 1e-1)}
# TensorRT picks its own kernels (TF32 for FP32 on recent GPUs, FP16-like mantissa)
ENGINE_TOLERANCE: dict[str, tuple[str, float]] = {"fp32": ("rms", 2e-2), "fp16": ("rms", 1e-1)}
# below this, the reference barely reacts to the input or the masks: parity is uninformative
SENSITIVITY_MIN = 1e-2


def relative_error(got: np.ndarray, want: np.ndarray, scale: float | None = None) -> float:
    """``max |got - want| / max |want|`` (or ``/ scale``: the uncertainty map is judged
    against the images' scale); shapes must agree; a zero scale gives inf unless ``got``
    equals ``want``."""
    if got.shape != want.shape:
        return float("inf")
    diff = float(np.abs(got.astype(np.float64) - want).max())
    scale = float(np.abs(want).max()) if scale is None else scale
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def rms_relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """``rms(got - want) / rms(want)``: the typical error, where the max is the worst pixel."""
    if got.shape != want.shape:
        return float("inf")
    diff = float(np.sqrt(np.mean((got.astype(np.float64) - want) ** 2)))
    scale = float(np.sqrt(np.mean(want.astype(np.float64) ** 2)))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def parity_inputs(dropout: list[dict[str, Any]], samples: int = 4, seed: int = 0
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``samples`` smooth synthetic spectrograms of varied levels and one drawn mask set."""
    generator = torch.Generator().manual_seed(seed)
    spectrogram = synthetic_spectrograms(samples, generator).numpy().astype(np.float32)
    return spectrogram, draw_masks(dropout, samples, np.random.default_rng(seed))


def reference(encoder: AudioEncoder, generator: DenseGenerator, spectrogram: np.ndarray,
              masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch (the unfolded eval-mode networks) on the same inputs: (embedding, image)."""
    with torch.no_grad():
        z = encoder.eval()(torch.from_numpy(spectrogram))
        image = generator.eval()(z, [torch.from_numpy(m) for m in masks])
    return z.numpy(), image.numpy()


def sensitivity(generator: DenseGenerator, z: np.ndarray, image: np.ndarray,
                dropout: list[dict[str, Any]]) -> dict[str, float]:
    """How much the reference images change with the input (rows of the batch, all-ones
    masks) and with the masks (drawn vs all ones), relative to their largest value."""
    ones = ones_masks(dropout, len(z))
    with torch.no_grad():
        plain = generator.eval()(torch.from_numpy(z), [torch.from_numpy(m) for m in ones])
    plain = plain.numpy()
    scale = max(float(np.abs(plain).max()), 1e-30)
    by_input = float(max(np.abs(plain[i] - plain[0]).max() for i in range(len(plain))))
    return {"input": by_input / scale, "masks": float(np.abs(image - plain).max()) / scale}


def verdict(key: str, got: np.ndarray, want: np.ndarray,
            tolerance: dict[str, tuple[str, float]], scale: float | None = None
            ) -> dict[str, Any]:
    """One file's figures: relative (max and RMS) and absolute error, the metric and limit
    of its precision, ok (False for a precision without a limit)."""
    metric, limit = tolerance.get(parse_model_key(key)[1], (None, None))
    rel, rms = relative_error(got, want, scale), rms_relative_error(got, want)
    diff = float(np.abs(got - want).max()) if got.shape == want.shape else float("inf")
    judged = rel if metric == "max" else rms
    ok = limit is not None and bool(judged <= limit)
    return {"relative_error": _finite(rel), "rms_relative_error": _finite(rms),
            "max_abs_error": _finite(diff), "metric": metric, "limit": limit, "ok": ok}


def _finite(x: float) -> float | None:
    """JSON holds no inf/NaN: a shape mismatch or a zero reference becomes None."""
    return x if np.isfinite(x) else None


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def describe(row: dict[str, Any]) -> str:
    """``relative error max 1.2e-05 rms 4.0e-06 (limit: max <= 1e-03)`` (+ an error)."""
    limit = "none" if row.get("limit") is None else f"{row['metric']} <= {row['limit']:.0e}"
    error = f" ({row['error']})" if row.get("error") else ""
    return (f"relative error max {_fmt(row.get('relative_error'), '.1e')} rms "
            f"{_fmt(row.get('rms_relative_error'), '.1e')} (limit: {limit}){error}")


def log_parity(parity: dict[str, Any], log: Callable[[str], None]) -> None:
    for key, row in parity.get("files", {}).items():
        if row.get("skipped"):
            log(f"parity {key:<18} skipped: {row['skipped']}")
            continue
        log(f"parity {key:<18} {describe(row)} {'ok' if row['ok'] else 'TOO LARGE'}")
    sens = parity.get("sensitivity")
    if sens is not None and not parity.get("informative", True):
        log(f"parity warning: the checkpoint's images barely change with the input "
            f"({sens['input']:.1e}) or the masks ({sens['masks']:.1e}); parity cannot see "
            "wiring errors with these weights")


def check_parity(encoder: AudioEncoder, generator: DenseGenerator, files: dict[str, Path],
                 dropout: list[dict[str, Any]], samples: int = 4,
                 seed: int = 0) -> dict[str, Any]:
    """Run every ONNX file in ``files`` (keys as in the manifest: ``encoder``, ``generator``,
    ``translator`` and their ``_fp16`` forms) on synthetic spectrograms and drawn masks and
    compare with PyTorch. Returns the figures for the manifest; ``passed`` says whether
    every relative error is within ``TOLERANCE`` of its precision and all-ones masks give
    repeatable outputs."""
    spectrogram, masks = parity_inputs(dropout, samples, seed)
    z_ref, image_ref = reference(encoder, generator, spectrogram, masks)
    mask_feed = {spec["input"]: m for spec, m in zip(dropout, masks, strict=True)}
    rows: dict[str, dict[str, Any]] = {}
    deterministic = True
    for key, path in files.items():
        session = cpu_session(path)
        if key.startswith("encoder"):
            (z,) = session.run(None, {"spectrogram": spectrogram})
            rows[key] = verdict(key, z, z_ref, TOLERANCE)
        elif key.startswith("generator"):
            (image,) = session.run(None, {"embedding": z_ref, **mask_feed})
            rows[key] = verdict(key, image, image_ref, TOLERANCE)
            ones = {spec["input"]: m for spec, m in zip(dropout, ones_masks(dropout, samples),
                                                           strict=True)}
            first = session.run(None, {"embedding": z_ref, **ones})[0]
            again = session.run(None, {"embedding": z_ref, **ones})[0]
            deterministic = deterministic and bool(np.array_equal(first, again))
        elif key.startswith("translator"):
            # one window, ``samples`` MC draws: compare with the generator on its embedding
            _, image_one = reference(encoder, generator,
                                     np.repeat(spectrogram[:1], samples, axis=0), masks)
            images, mean, spread = session.run(None, {"spectrogram": spectrogram[:1],
                                                      **mask_feed})
            scale = float(np.abs(image_one).max())   # all three are in image units
            parts = [verdict(key, images, image_one, TOLERANCE),
                     verdict(key, mean, image_one.mean(0, keepdims=True), TOLERANCE, scale),
                     verdict(key, spread, image_one.std(0, keepdims=True), TOLERANCE, scale)]
            rows[key] = max(parts, key=lambda r: r["relative_error"])
    sens = sensitivity(generator, z_ref, image_ref, dropout)
    passed = all(row["ok"] for row in rows.values()) and deterministic
    return {"samples": samples, "seed": seed, "tolerance": dict(TOLERANCE),
            "metrics": {"max": "max |onnx - pytorch| / max |pytorch|",
                        "rms": "rms(onnx - pytorch) / rms(pytorch)"},
            "files": rows, "relative_error": {k: r["relative_error"] for k, r in rows.items()},
            "max_abs_error": {k: r["max_abs_error"] for k, r in rows.items()},
            "sensitivity": sens,
            "informative": min(sens.values()) >= SENSITIVITY_MIN,
            "all_ones_deterministic": deterministic, "passed": passed}


def check_engine_parity(encoder: AudioEncoder, generator: DenseGenerator, folder: Path,
                        engines: dict[str, dict[str, Any]], dropout: list[dict[str, Any]],
                        samples: int = 4, seed: int = 0) -> dict[str, Any]:
    """TensorRT engines against PyTorch (same inputs and masks as ``check_parity``), one
    verdict per engine: an engine that fails to load or run gets ``ok: False`` and the
    error, the others are still checked."""
    from runtime.backends import TrtModel
    from runtime.errors import first_line

    spectrogram, masks = parity_inputs(dropout, samples, seed)
    z_ref, image_ref = reference(encoder, generator, spectrogram, masks)
    rows: dict[str, dict[str, Any]] = {}
    for key, entry in engines.items():
        try:
            engine = TrtModel(folder / entry["file"], entry)
            if key.startswith("encoder"):
                (z,) = engine.run({"spectrogram": spectrogram})
                rows[key] = verdict(key, z, z_ref, ENGINE_TOLERANCE)
            else:
                feeds = {"embedding": z_ref, **{s["input"]: m for s, m in zip(dropout, masks,
                                                                              strict=True)}}
                (image,) = engine.run(feeds)
                rows[key] = verdict(key, image, image_ref, ENGINE_TOLERANCE)
            del engine
        except Exception as exc:  # noqa: BLE001 - TensorRT/CUDA raise many types
            metric, limit = ENGINE_TOLERANCE.get(parse_model_key(key)[1], (None, None))
            rows[key] = {"relative_error": None, "rms_relative_error": None,
                         "max_abs_error": None, "metric": metric, "limit": limit, "ok": False,
                         "error": first_line(exc, with_type=True)}
    return {"samples": samples, "seed": seed, "tolerance": dict(ENGINE_TOLERANCE),
            "files": rows, "relative_error": {k: r["relative_error"] for k, r in rows.items()},
            "max_abs_error": {k: r["max_abs_error"] for k, r in rows.items()},
            "passed": all(r["ok"] for r in rows.values())}
