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

from runtime.frontend import FrontEndConfig, log_mel_batch
from runtime.model.masks import draw_masks, ones_masks
from runtime.model.precision import parse_model_key
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
# The audio-in graphs: ONNX Runtime's Conv sums the DFT in another order than PyTorch's (~1e-6
# relative); the log turns that into ~1e-5 on quiet bins and the input-sensitive test networks
# amplify it to ~1e-3 of the image scale. FP32 is held to half a grey level (4e-3 of the
# [-1, 1] range): after rounding, images still agree within 1 grey level.
AUDIO_TOLERANCE: dict[str, tuple[str, float]] = {**TOLERANCE, "fp32": ("max", 4e-3)}
# in-graph log-mel vs runtime/frontend.py, max |difference| in feature units ([-1, 1]):
# 1e-4 is 0.005 dB at the default 100-dB range; measured ~1e-5 (float32 DFT-by-Conv vs rfft)
FEATURE_TOLERANCE = 1e-4
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
    front = parity.get("front_end")
    if front is not None:
        log(f"parity {'front_end':<18} in-graph log-mel vs runtime/frontend.py max abs "
            f"{front['max_abs_error']:.1e} (limit {front['limit']:.0e}) "
            f"{'ok' if front['ok'] else 'TOO LARGE'}")
    sens = parity.get("sensitivity")
    if sens is not None and not parity.get("informative", True):
        log(f"parity warning: the checkpoint's images barely change with the input "
            f"({sens['input']:.1e}) or the masks ({sens['masks']:.1e}); parity cannot see "
            "wiring errors with these weights")


def check_parity(encoder: AudioEncoder, generator: DenseGenerator, files: dict[str, Path],
                 dropout: list[dict[str, Any]], samples: int = 4,
                 seed: int = 0, front_end: FrontEndConfig | None = None) -> dict[str, Any]:
    """Run every ONNX file in ``files`` (keys as in the manifest: ``encoder``, ``generator``,
    ``translator`` and their ``_fp16`` forms) on synthetic spectrograms and drawn masks and
    compare with PyTorch. The audio-in graphs (``encoder_audio``, ``translator_audio``; they
    need ``front_end``) run on synthetic audio (``parity_audio``) and are compared with
    PyTorch with the same front end (``export.logmel``), held to ``AUDIO_TOLERANCE``; that
    front end is held to ``runtime.frontend.log_mel_batch`` (``front_end``). Returns the
    figures for the manifest; ``passed`` says whether every relative error is within the
    tolerance of its precision and all-ones masks give repeatable outputs."""
    spectrogram, masks = parity_inputs(dropout, samples, seed)
    z_ref, image_ref = reference(encoder, generator, spectrogram, masks)
    mask_feed = {spec["input"]: m for spec, m in zip(dropout, masks, strict=True)}
    rows: dict[str, dict[str, Any]] = {}
    deterministic = True
    audio = parity_audio(front_end, samples, seed) if front_end is not None else None
    for key, path in files.items():
        session = cpu_session(path)
        if "_audio" in key:
            if audio is None or front_end is None:
                raise ValueError(f"parity of {key} needs the export's front end")
            rows[key] = _audio_row(key, session, encoder, generator, audio, front_end, masks,
                                   mask_feed)
        elif key.startswith("encoder"):
            (z,) = session.run(None, {"spectrogram": spectrogram})
            rows[key] = verdict(key, z, z_ref, TOLERANCE)
        elif key.startswith("generator"):
            (image,) = session.run(None, {"embedding": z_ref, **mask_feed})
            rows[key] = verdict(key, image, image_ref, TOLERANCE)
            deterministic = deterministic and _repeatable(session, z_ref, dropout, samples)
        elif key.startswith("translator"):
            rows[key] = _fused_row(key, session, encoder, generator, spectrogram[:1],
                                   {"spectrogram": spectrogram[:1]}, masks, mask_feed,
                                   TOLERANCE)
    sens = sensitivity(generator, z_ref, image_ref, dropout)
    passed = all(row["ok"] for row in rows.values()) and deterministic
    front_row = None
    if audio is not None and front_end is not None and any("_audio" in k for k in files):
        front_row = front_end_parity(audio, front_end)
        passed = passed and front_row["ok"]
    return {"samples": samples, "seed": seed, "tolerance": dict(TOLERANCE),
            "audio_tolerance": dict(AUDIO_TOLERANCE),
            "metrics": {"max": "max |onnx - pytorch| / max |pytorch|",
                        "rms": "rms(onnx - pytorch) / rms(pytorch)"},
            "files": rows, "relative_error": {k: r["relative_error"] for k, r in rows.items()},
            "max_abs_error": {k: r["max_abs_error"] for k, r in rows.items()},
            "sensitivity": sens,
            "informative": min(sens.values()) >= SENSITIVITY_MIN,
            "all_ones_deterministic": deterministic,
            **({"front_end": front_row} if front_row is not None else {}), "passed": passed}


def _audio_row(key: str, session: ort.InferenceSession, encoder: AudioEncoder,
               generator: DenseGenerator, audio: np.ndarray, front_end: FrontEndConfig,
               masks: list[np.ndarray], mask_feed: dict[str, np.ndarray]) -> dict[str, Any]:
    """An audio-in graph (``encoder_audio``, ``translator_audio``) against PyTorch with the same
    front end (``export.logmel.LogMel``); the front end itself is held to runtime/frontend.py
    apart (``front_end_parity``)."""
    features = torch_features(audio, front_end)
    if key.startswith("encoder"):
        (z,) = session.run(None, {"audio": audio})
        return verdict(key, z, reference(encoder, generator, features, masks)[0],
                       AUDIO_TOLERANCE)
    return _fused_row(key, session, encoder, generator, features[:1], {"audio": audio[:1]},
                      masks, mask_feed, AUDIO_TOLERANCE)


def _repeatable(session: ort.InferenceSession, z: np.ndarray, dropout: list[dict[str, Any]],
                samples: int) -> bool:
    """Whether a generator graph gives the same images twice with all-ones masks."""
    ones = {spec["input"]: m for spec, m in zip(dropout, ones_masks(dropout, samples),
                                                   strict=True)}
    first = session.run(None, {"embedding": z, **ones})[0]
    return bool(np.array_equal(first, session.run(None, {"embedding": z, **ones})[0]))


def torch_features(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """The audio-in graphs' front end in PyTorch (``export.logmel.LogMel``), ``[B,1,M,T]``."""
    from export.logmel import LogMel

    with torch.no_grad():
        return LogMel(cfg)(torch.from_numpy(audio)).numpy()


def front_end_parity(audio: np.ndarray, cfg: FrontEndConfig) -> dict[str, Any]:
    """The in-graph front end against ``runtime.frontend.log_mel_batch`` on ``audio``:
    max |difference| in feature units ([-1, 1]; 0.02 = 1 dB at the default dB range), held
    to ``FEATURE_TOLERANCE``."""
    diff = float(np.abs(torch_features(audio, cfg) - log_mel_batch(audio, cfg)[:, None]).max())
    return {"max_abs_error": diff, "limit": FEATURE_TOLERANCE, "ok": diff <= FEATURE_TOLERANCE,
            "reference": "runtime.frontend.log_mel_batch"}


def _fused_row(key: str, session: ort.InferenceSession, encoder: AudioEncoder,
               generator: DenseGenerator, spectrogram: np.ndarray, feed: dict[str, np.ndarray],
               masks: list[np.ndarray], mask_feed: dict[str, np.ndarray],
               tolerance: dict[str, tuple[str, float]]) -> dict[str, Any]:
    """A fused graph (one window, ``len(masks[0])`` MC draws) against the generator on the
    window's embedding: images, their mean and their spread, the worst of the three."""
    samples = len(masks[0])
    _, image_one = reference(encoder, generator, np.repeat(spectrogram, samples, axis=0), masks)
    images, mean, spread = session.run(None, {**feed, **mask_feed})
    scale = float(np.abs(image_one).max())   # all three are in image units
    parts = [verdict(key, images, image_one, tolerance),
             verdict(key, mean, image_one.mean(0, keepdims=True), tolerance, scale),
             verdict(key, spread, image_one.std(0, keepdims=True), tolerance, scale)]
    return max(parts, key=lambda r: r["relative_error"])


def parity_audio(cfg: FrontEndConfig, samples: int = 4, seed: int = 0) -> np.ndarray:
    """``[samples, n_samples]`` float32 test sounds at varied levels: chirps, tones and noise
    (seeded), from near silence (-60 dB) to full scale."""
    rng = np.random.default_rng(seed)
    t = np.arange(cfg.n_samples) / cfg.sample_rate
    rows = []
    for i in range(samples):
        f0 = rng.uniform(100, cfg.sample_rate / 8)
        chirp = np.sin(2 * np.pi * (f0 * t + rng.uniform(50, 500) * t**2))
        tone = np.sin(2 * np.pi * rng.uniform(200, cfg.sample_rate / 3) * t)
        noise = rng.standard_normal(cfg.n_samples) * np.linspace(0, 1, cfg.n_samples) ** i
        level = 10 ** (-3 * (i % 4) / 3)
        rows.append(level * np.clip(0.5 * chirp + 0.3 * tone + 0.2 * noise, -1, 1))
    return np.asarray(rows, np.float32)


def check_engine_parity(encoder: AudioEncoder, generator: DenseGenerator, folder: Path,
                        engines: dict[str, dict[str, Any]], dropout: list[dict[str, Any]],
                        samples: int = 4, seed: int = 0) -> dict[str, Any]:
    """TensorRT engines against PyTorch (same inputs and masks as ``check_parity``), one
    verdict per engine: an engine that fails to load or run gets ``ok: False`` and the
    error, the others are still checked."""
    from runtime.errors import first_line
    from runtime.model.backends import TrtModel

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
