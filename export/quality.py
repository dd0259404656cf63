"""Quality gates of a lower-precision export against FP32, on the same inputs and masks.

* **Images**: per-image PSNR and max error of INT8 vs FP32 on held-out store windows (val
  split, else test), with masks drawn once from a fixed seed and fed to both.
* **Demo scores**: class coherence (a classifier trained on the store's real train images
  puts a generated image of a test sound in the sound's class, as ``trainer.demo.coherence``)
  and informativity (that classifier gives the sound's class a probability of at least 0.5,
  the automatic-label rule of ``trainer.evaluate.autolabel``), each backend scoring the same
  test sounds with the same MC masks. Needs a store with real images; else skipped, said so.

``score_translator(encode, generate, ...)`` scores any backend given its two calls, so the
same function serves ONNX Runtime sessions, ``runtime.model.backends`` translators or PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from export.parity import cpu_session
from runtime.frontend import from_uint8
from runtime.model.masks import draw_masks

Encode = Callable[[np.ndarray], np.ndarray]
Generate = Callable[[np.ndarray, Sequence[np.ndarray]], np.ndarray]
BATCH = 16


class OrtChain:
    """Encoder + generator ONNX files on ONNX Runtime CPU: ``encode`` and ``generate``."""

    def __init__(self, encoder: Path, generator: Path, dropout: list[dict[str, Any]]) -> None:
        self._encoder, self._generator = cpu_session(encoder), cpu_session(generator)
        self._inputs = [spec["input"] for spec in dropout]

    def encode(self, spectrogram: np.ndarray) -> np.ndarray:
        return self._encoder.run(None, {"spectrogram": spectrogram})[0]

    def generate(self, embedding: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        feeds = {"embedding": embedding, **dict(zip(self._inputs, masks, strict=True))}
        return self._generator.run(None, feeds)[0]


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``[B,3,96,96]`` in [-1, 1] -> uint8 ``[B,96,96,3]`` (as the runtime publishes them)."""
    pixels = np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    return pixels.transpose(0, 2, 3, 1)


def _images(encode: Encode, generate: Generate, spectrograms: np.ndarray,
            masks: list[np.ndarray]) -> np.ndarray:
    """One image per spectrogram (mask row ``i`` with window ``i``), in batches."""
    out = []
    for start in range(0, len(spectrograms), BATCH):
        part = slice(start, start + BATCH)
        out.append(generate(encode(spectrograms[part]), [m[part] for m in masks]))
    return np.concatenate(out)


def chain_images(chain: OrtChain, spectrograms: np.ndarray,
                 masks: list[np.ndarray]) -> np.ndarray:
    return _images(chain.encode, chain.generate, spectrograms, masks)


def image_errors(reference: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Per-image PSNR (peak = the [-1, 1] range; mean, min, median), the PSNR of the mean
    squared error over all images (``pooled``: the worst images weigh in), and the max and
    mean error in grey levels."""
    mse = ((other.astype(np.float64) - reference) ** 2).reshape(len(reference), -1).mean(1)
    psnr = 10.0 * np.log10(4.0 / np.maximum(mse, 1e-20))
    grey = np.abs(other.astype(np.float64) - reference).max() * 127.5
    pooled = 10.0 * np.log10(4.0 / max(float(mse.mean()), 1e-20))   # of the mean error
    return {"psnr_db_mean": round(float(psnr.mean()), 2),
            "psnr_db_pooled": round(pooled, 2),
            "psnr_db_min": round(float(psnr.min()), 2),
            "psnr_db_median": round(float(np.median(psnr)), 2),
            "max_error_grey_levels": round(float(grey), 2),
            "mean_error_grey_levels": round(float(np.abs(other - reference).mean() * 127.5),
                                            3)}


def score_translator(encode: Encode, generate: Generate, classifier: Any,
                     spectrograms: np.ndarray, labels: np.ndarray,
                     masks: list[np.ndarray]) -> dict[str, float]:
    """Class coherence and informativity of one backend: ``masks`` hold one row per
    (MC sample, sound), samples outer (``len(masks[i]) == samples * len(labels)``)."""
    from trainer.evaluate.real_classifier import class_probabilities

    samples = len(masks[0]) // len(labels)
    repeated = np.tile(spectrograms, (samples, 1, 1, 1))
    truth = np.tile(labels, samples)
    probs = class_probabilities(classifier, to_uint8(_images(encode, generate, repeated,
                                                             masks)))
    own = probs[np.arange(len(truth)), truth]
    return {"coherence": float((probs.argmax(1) == truth).mean()),
            "informativity": float((own >= 0.5).mean()), "images": int(len(truth))}


def gate_report(fp32_files: dict[str, Path], int8_files: dict[str, Path],
                dropout: list[dict[str, Any]], store: Any, options: Any,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Measure the gates of ``int8_files`` against ``fp32_files`` (``Int8Options``
    thresholds); ``passed`` and, when not, ``reason``."""
    fp32 = OrtChain(fp32_files["encoder"], fp32_files["generator"], dropout)
    int8 = OrtChain(int8_files["encoder"], int8_files["generator"], dropout)
    held = "val" if "val" in store.splits else "test" if "test" in store.splits else None
    report: dict[str, Any] = {"thresholds": {"min_psnr_db_mean": options.min_psnr_db,
                                             "max_drop_points": options.max_drop_points}}
    failures = []
    if held is None:
        failures.append(f"store {store.path} has no val or test split for held-out windows")
    else:
        windows, _ = store.windows(held, options.gate_windows, options.seed + 1)
        masks = draw_masks(dropout, len(windows), np.random.default_rng(options.seed + 1))
        errors = image_errors(chain_images(fp32, windows, masks),
                              chain_images(int8, windows, masks))
        report["images"] = {"split": held, "windows": int(len(windows)),
                            "masks": f"draw_masks, seed {options.seed + 1}", **errors}
        log(f"INT8 vs FP32 on {len(windows)} held-out {held} windows: PSNR mean "
            f"{errors['psnr_db_mean']} dB (min {errors['psnr_db_min']}), max error "
            f"{errors['max_error_grey_levels']} grey levels")
        if errors["psnr_db_mean"] < options.min_psnr_db:
            failures.append(f"mean PSNR {errors['psnr_db_mean']} dB < {options.min_psnr_db}")
    scores = _demo_scores(fp32, int8, dropout, store, options, log)
    report["demo_scores"] = scores
    for name in ("coherence", "informativity"):
        drop = scores.get(f"{name}_drop_points")
        if drop is not None and drop > options.max_drop_points:
            failures.append(f"{name} drops {drop:.1f} points (> {options.max_drop_points})")
    report["passed"] = not failures
    if failures:
        report["reason"] = "; ".join(failures)
    return report


def _demo_scores(fp32: OrtChain, int8: OrtChain, dropout: list[dict[str, Any]], store: Any,
                 options: Any, log: Callable[[str], None]) -> dict[str, Any]:
    if not store.has_images:
        return {"skipped": f"store {store.path} has no real images to train the class "
                           "classifier on"}
    split = "test" if "test" in store.splits else "val" if "val" in store.splits else None
    if split is None:
        return {"skipped": f"store {store.path} has no test or val split"}
    from trainer.evaluate.real_classifier import train_real_classifier

    classifier, real_accuracy = train_real_classifier(store, seed=options.seed, progress=False)
    arrays = store.split(split)
    spectrograms = np.ascontiguousarray(from_uint8(arrays.spectrograms[:])[:, None])
    labels = np.asarray(arrays.labels, dtype=np.int64)
    masks = draw_masks(dropout, options.mc_samples * len(labels),
                       np.random.default_rng(options.seed + 2))
    result: dict[str, Any] = {"split": split, "sounds": int(len(labels)),
                              "mc_samples": options.mc_samples,
                              "classifier_accuracy_on_real_val": real_accuracy}
    for name, chain in (("fp32", fp32), ("int8", int8)):
        result[name] = score_translator(chain.encode, chain.generate, classifier,
                                        spectrograms, labels, masks)
    for key in ("coherence", "informativity"):
        result[f"{key}_drop_points"] = round(100 * (result["fp32"][key] - result["int8"][key]),
                                             2)
    log(f"demo scores on {len(labels)} {split} sounds x {options.mc_samples} MC samples: "
        f"coherence FP32 {result['fp32']['coherence']:.1%} / INT8 "
        f"{result['int8']['coherence']:.1%}, informativity FP32 "
        f"{result['fp32']['informativity']:.1%} / INT8 {result['int8']['informativity']:.1%}")
    return result
