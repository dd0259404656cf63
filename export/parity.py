"""Parity: ONNX Runtime against PyTorch on the same inputs and the same masks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from runtime.masks import draw_masks, ones_masks
from trainer.models import AudioEncoder, DenseGenerator

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}  # max abs error on embeddings and images


def cpu_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def reference(encoder: AudioEncoder, generator: DenseGenerator, spectrogram: np.ndarray,
              masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch (the unfolded eval-mode networks) on the same inputs: (embedding, image)."""
    with torch.no_grad():
        z = encoder.eval()(torch.from_numpy(spectrogram))
        image = generator.eval()(z, [torch.from_numpy(m) for m in masks])
    return z.numpy(), image.numpy()


def log_parity(parity: dict[str, Any], log: Callable[[str], None]) -> None:
    for key, err in parity["max_abs_error"].items():
        limit = TOLERANCE["fp16" if "fp16" in key else "fp32"]
        verdict = "ok" if err <= limit else "TOO LARGE"
        log(f"parity {key:<18} max abs error {err:.2e} (limit {limit:.0e}) {verdict}")


def check_parity(encoder: AudioEncoder, generator: DenseGenerator, files: dict[str, Path],
                 dropout: list[dict[str, Any]], samples: int = 4,
                 seed: int = 0) -> dict[str, Any]:
    """Run every ONNX file in ``files`` (keys as in the manifest: ``encoder``, ``generator``,
    ``translator`` and their ``_fp16`` forms) on random spectrograms and drawn masks and
    compare with PyTorch. Returns the figures for the manifest; ``passed`` says whether
    every error is within ``TOLERANCE`` of its precision."""
    rng = np.random.default_rng(seed)
    spectrogram = rng.uniform(-1, 1, (samples, 1, 128, 100)).astype(np.float32)
    masks = draw_masks(dropout, samples, rng)
    z_ref, image_ref = reference(encoder, generator, spectrogram, masks)
    mask_feed = {spec["input"]: m for spec, m in zip(dropout, masks, strict=True)}
    errors: dict[str, float] = {}
    deterministic = True
    for key, path in files.items():
        session = cpu_session(path)
        if key.startswith("encoder"):
            (z,) = session.run(None, {"spectrogram": spectrogram})
            errors[key] = float(np.abs(z - z_ref).max())
        elif key.startswith("generator"):
            (image,) = session.run(None, {"embedding": z_ref, **mask_feed})
            errors[key] = float(np.abs(image - image_ref).max())
            ones = {spec["input"]: m for spec, m in zip(dropout, ones_masks(dropout, samples),
                                                           strict=True)}
            first = session.run(None, {"embedding": z_ref, **ones})[0]
            again = session.run(None, {"embedding": z_ref, **ones})[0]
            deterministic = deterministic and bool(np.array_equal(first, again))
        elif key.startswith("translator"):
            # one window, ``samples`` MC draws: compare with the generator on its embedding
            _, image_one = reference(encoder, generator,
                                     np.repeat(spectrogram[:1], samples, axis=0), masks)
            images, mean, spread = session.run(None, {"spectrogram": spectrogram[:1], **mask_feed})
            errors[key] = float(max(np.abs(images - image_one).max(),
                                    np.abs(mean - image_one.mean(0, keepdims=True)).max(),
                                    np.abs(spread - image_one.std(0, keepdims=True)).max()))
    passed = all(err <= TOLERANCE["fp16" if "fp16" in key else "fp32"]
                 for key, err in errors.items())
    return {"samples": samples, "seed": seed, "tolerance": dict(TOLERANCE),
            "max_abs_error": errors, "all_ones_deterministic": deterministic,
            "passed": passed and deterministic}


def check_engine_parity(encoder: AudioEncoder, generator: DenseGenerator, folder: Path,
                        engines: dict[str, dict[str, Any]], dropout: list[dict[str, Any]],
                        samples: int = 4, seed: int = 0) -> dict[str, Any]:
    """TensorRT engines against PyTorch (same inputs and masks as ``check_parity``)."""
    from runtime.backends import _TrtModel

    rng = np.random.default_rng(seed)
    spectrogram = rng.uniform(-1, 1, (samples, 1, 128, 100)).astype(np.float32)
    masks = draw_masks(dropout, samples, rng)
    z_ref, image_ref = reference(encoder, generator, spectrogram, masks)
    errors: dict[str, float] = {}
    for key, entry in engines.items():
        engine = _TrtModel(folder / entry["file"], entry)
        if key.startswith("encoder"):
            (z,) = engine.run({"spectrogram": spectrogram})
            errors[key] = float(np.abs(z - z_ref).max())
        else:
            feeds = {"embedding": z_ref, **{s["input"]: m for s, m in zip(dropout, masks,
                                                                          strict=True)}}
            (image,) = engine.run(feeds)
            errors[key] = float(np.abs(image - image_ref).max())
    # TensorRT picks its own kernels (TF32 on recent GPUs): report, judge against fp16 limit
    passed = all(err <= TOLERANCE["fp16"] for err in errors.values())
    return {"samples": samples, "seed": seed, "max_abs_error": errors, "passed": passed}
