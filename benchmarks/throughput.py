"""How many concurrent real-time streams one machine holds with one backend.

Each stream yields one 1-s window per second. Serving S streams means: every second, compute
the log-mel features of S windows and run ONE batched engine call (encoder on ``[S, 1, 128, 100]``,
generator on ``[S*K, D]`` with fresh masks). The model step is timed with its inputs ready
(masks drawn and features computed before the clock starts); the features are timed on their
own. The machine holds S streams while the step fits the window hop (1 s): model p99 +
features p99 on a CPU backend (they share the cores), max of the two on a GPU backend (the
CPU computes the next features while the GPU runs). S doubles until it does not fit, then a
bisection narrows the limit. With the front end in the graph (a translator whose
``features`` is ``"graph"``), the "features" are the sanitised audio windows and the model step
starts from them, as in the server (``Translator.translate_batch``, the server's one call).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from benchmarks.report import summarize
from runtime.frontend import FrontEndConfig, log_mel_batch
from runtime.model.masks import draw_masks
from runtime.model.translator import Translator
from runtime.wire.protocol import sanitise_audio


def model_step(translator: Translator, features: np.ndarray, masks: list[np.ndarray],
               k: int) -> float:
    """Seconds for the batched call (encoder + generator) of S windows (K MC samples each),
    inputs ready."""
    start = time.perf_counter()
    translator.translate_batch(features, masks, k)
    return time.perf_counter() - start


def in_graph(translator: Translator) -> bool:
    """Whether ``translator`` computes the log-mel inside its graph (takes audio windows)."""
    return translator.features == "graph"


def features_step(windows: np.ndarray, cfg: FrontEndConfig, graph: bool = False
                  ) -> tuple[np.ndarray, float]:
    """Log-mel features of S windows (numpy, one thread), or with ``graph`` only the
    sanitised windows the audio-in graph takes; and the seconds they took."""
    start = time.perf_counter()
    features = sanitise_audio(windows) if graph else log_mel_batch(windows, cfg)[:, None]
    return features, time.perf_counter() - start


def measure_batch(translator: Translator, audio_windows: np.ndarray, streams: int,
                  cfg: FrontEndConfig, k: int, rng: np.random.Generator, reps: int,
                  time_cap_s: float, pipelined: bool = False,
                  budget_s: float = 1.0) -> dict[str, Any]:
    """``reps`` timed model steps of ``streams`` windows (after two warm-up calls), the
    features timed on their own (a few reps), masks drawn before the clock starts.
    ``ok``: the batch fits the budget: ``max(model, features)`` when the stages are
    pipelined on different hardware (a GPU backend), their sum otherwise (p99s)."""
    idx = np.arange(streams) % len(audio_windows)
    windows = audio_windows[idx]
    feature_times: list[float] = []
    features = None
    for _ in range(max(1, min(reps, 3))):
        features, seconds = features_step(windows, cfg, in_graph(translator))
        feature_times.append(seconds * 1000)
    assert features is not None
    dropout = translator.dropout
    for _ in range(2):                                      # warm-up: allocations, autotune
        model_step(translator, features, draw_masks(dropout, streams * k, rng), k)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < reps:
        masks = draw_masks(dropout, streams * k, rng)       # outside the timed step
        times.append(model_step(translator, features, masks, k) * 1000)
        if len(times) >= 3 and time.perf_counter() - started > time_cap_s:
            break
    stats, feat = summarize(times), summarize(feature_times)
    total = max(stats["p99"], feat["p99"]) if pipelined else stats["p99"] + feat["p99"]
    return {"streams": streams, "reps": len(times), "p50_ms": stats["p50"],
            "p99_ms": stats["p99"], "max_ms": stats["max"], "features_p50_ms": feat["p50"],
            "features_p99_ms": feat["p99"], "step_p99_ms": round(total, 3),
            "ok": total <= budget_s * 1000}


def max_streams(translator: Translator, audio_windows: np.ndarray, cfg: FrontEndConfig,
                k: int, budget_s: float = 1.0, reps: int = 20, time_cap_s: float = 20.0,
                limit: int = 65536, bisect_steps: int = 3, seed: int = 0,
                pipelined: bool = False) -> dict[str, Any]:
    """Largest S whose batched step stays within ``budget_s`` (``measure_batch``: model p99,
    plus or beside the features' p99); the curve measured on the way.

    ``time_cap_s`` caps the time spent per batch size (at least 3 reps are always taken), so on
    a slow machine p99 is taken over fewer reps; the JSON keeps the rep count of each point.
    """
    rng = np.random.default_rng(seed)
    curve: list[dict[str, Any]] = []

    def ok(point: dict[str, Any]) -> bool:
        return bool(point["ok"])

    def measure(size: int) -> dict[str, Any]:
        return measure_batch(translator, audio_windows, size, cfg, k, rng, reps, time_cap_s,
                             pipelined, budget_s)

    good: dict[str, Any] | None = None
    bad: dict[str, Any] | None = None
    s = 1
    while s <= limit:
        point = measure(s)
        curve.append(point)
        if not ok(point):
            bad = point
            break
        good = point
        s *= 2
    lo = good["streams"] if good else 0
    hi = bad["streams"] if bad else None
    for _ in range(bisect_steps):
        if hi is None or hi - lo <= 1:
            break
        mid = (lo + hi) // 2
        point = measure(mid)
        curve.append(point)
        if ok(point):
            lo, good = mid, point
        else:
            hi = mid
    curve.sort(key=lambda p: p["streams"])
    return {"streams": lo, "budget_ms": budget_s * 1000, "at_limit": good,
            "limit_reached": hi is None, "pipelined": pipelined, "curve": curve}
