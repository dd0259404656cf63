"""How many concurrent real-time streams one machine holds with one backend.

Each stream yields one 1-s window per second. Serving S streams means: every second, compute
the log-mel features of S windows and run ONE batched engine call (encoder on ``[S, 1, 128, 100]``,
generator on ``[S*K, D]`` with fresh masks). The machine holds S streams while the p99 of that
batched step stays under the window hop (1 s). S doubles until p99 passes the budget, then a
bisection narrows the limit.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from benchmarks.report import summarize
from runtime.frontend import FrontEndConfig, log_mel_batch
from runtime.masks import draw_masks


class Translator(Protocol):
    manifest: dict[str, Any]

    def encode(self, spectrogram: np.ndarray) -> np.ndarray: ...

    def generate(self, z: np.ndarray, masks: list[np.ndarray]) -> np.ndarray: ...


def batched_step(translator: Translator, windows: np.ndarray, cfg: FrontEndConfig, k: int,
                 rng: np.random.Generator) -> float:
    """Seconds for features + encoder + generator of S windows (K MC samples each)."""
    start = time.perf_counter()
    features = log_mel_batch(windows, cfg)[:, None]
    z = translator.encode(features)
    z = np.repeat(z, k, axis=0) if k > 1 else z
    masks = draw_masks(translator.manifest["dropout"], z.shape[0], rng)
    translator.generate(z, masks)
    return time.perf_counter() - start


def measure_batch(translator: Translator, audio_windows: np.ndarray, streams: int,
                  cfg: FrontEndConfig, k: int, rng: np.random.Generator, reps: int,
                  time_cap_s: float) -> dict[str, Any]:
    """``reps`` timed batched steps of ``streams`` windows (after one warm-up call)."""
    idx = np.arange(streams) % len(audio_windows)
    windows = audio_windows[idx]
    for _ in range(2):                                      # warm-up: allocations, autotune
        batched_step(translator, windows, cfg, k, rng)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < reps:
        times.append(batched_step(translator, windows, cfg, k, rng) * 1000)
        if len(times) >= 3 and time.perf_counter() - started > time_cap_s:
            break
    stats = summarize(times)
    return {"streams": streams, "reps": len(times), "p50_ms": stats["p50"],
            "p99_ms": stats["p99"], "max_ms": stats["max"]}


def max_streams(translator: Translator, audio_windows: np.ndarray, cfg: FrontEndConfig,
                k: int, budget_s: float = 1.0, reps: int = 20, time_cap_s: float = 20.0,
                limit: int = 65536, bisect_steps: int = 3, seed: int = 0) -> dict[str, Any]:
    """Largest S whose batched-step p99 stays within ``budget_s``; the curve measured on the way.

    ``time_cap_s`` caps the time spent per batch size (at least 3 reps are always taken), so on
    a slow machine p99 is taken over fewer reps; the JSON keeps the rep count of each point.
    """
    rng = np.random.default_rng(seed)
    curve: list[dict[str, Any]] = []

    def ok(point: dict[str, Any]) -> bool:
        return point["p99_ms"] <= budget_s * 1000

    good: dict[str, Any] | None = None
    bad: dict[str, Any] | None = None
    s = 1
    while s <= limit:
        point = measure_batch(translator, audio_windows, s, cfg, k, rng, reps, time_cap_s)
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
        point = measure_batch(translator, audio_windows, mid, cfg, k, rng, reps, time_cap_s)
        curve.append(point)
        if ok(point):
            lo, good = mid, point
        else:
            hi = mid
    curve.sort(key=lambda p: p["streams"])
    return {"streams": lo, "budget_ms": budget_s * 1000, "at_limit": good,
            "limit_reached": hi is None, "curve": curve}
