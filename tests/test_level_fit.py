"""The level study (trainer.data.level_fit) on generated recordings and images."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.frontend import FrontEndConfig
from trainer.data import level_fit


def recording(seconds: float, amplitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 44100)) / 44100
    tone = np.sin(2 * np.pi * (300 + 100 * seed) * t) * (1 + np.sin(2 * np.pi * 0.7 * t))
    return (amplitude * (tone + 0.3 * rng.standard_normal(len(t)))).astype(np.float32)


def test_per_recording_statistics_and_intervals() -> None:
    images = [np.full((2, 80, 100), 10, np.uint8), np.full((1, 80, 100), 30, np.uint8)]
    images[1][0, 0, :3] = 255
    stats = level_fit.per_recording(images)
    official = np.zeros(256)
    official[10] = 1.0
    s = level_fit.summary(stats, official)
    assert s["mean_pixel"] == pytest.approx((2 * 8000 * 10 + 7997 * 30 + 3 * 255) / 24000)
    assert s["windows_white"] == pytest.approx(1 / 3)
    assert s["recordings_white"] == pytest.approx(0.5)
    assert s["white_pixels_median"] == 3
    assert s["histogram_emd"] > 0
    boot = level_fit.with_intervals(stats, official, boot=50)
    assert set(boot) == set(s)
    for key, entry in boot.items():
        assert entry["value"] == s[key] and entry["ci95"][0] <= entry["ci95"][1]


def test_jpeg_round_trip_changes_little() -> None:
    pixels = np.tile(np.linspace(0, 255, 100, dtype=np.uint8), (2, 128, 1))
    out = level_fit.jpeg_q75(pixels)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - pixels).mean() < 3


def test_study_fits_on_one_set_and_reports_on_the_other() -> None:
    """A quiet held-out set: the fixed range darkens it, the clip level does not."""
    fit = [(f"fit{i}", recording(2.0, 0.3, i), 44100) for i in range(3)]
    held = [(f"held{i}", recording(2.0, 0.003, 10 + i), 22050) for i in range(3)]
    held = [(n, a[::2].copy(), r) for n, a, r in held]
    rng = np.random.default_rng(0)
    official = rng.integers(0, 60, (12, 128, 100)).astype(np.uint8)
    official[::3, 5, 5] = 255
    ids = [f"c001_s{i // 3:05d}" for i in range(12)]
    report = level_fit.study(official, ids, fit, held, boot=20)
    assert report["official"]["videos"] == 4 and report["official"]["recordings_white"] == 1.0
    assert report["fitted"]["range_db"] in level_fit.RANGES_DB
    assert report["fitted"]["decay_db_per_s"] in level_fit.DECAYS_DB_PER_S
    held_out = report["sets"]["held_out"]
    assert held_out["recordings"] == 3
    assert held_out["clip"]["mean_pixel"]["value"] > held_out["fixed"]["mean_pixel"]["value"]
    assert held_out["clip"]["recordings_white"]["value"] == 1.0
    cfg = FrontEndConfig(**report["config"])
    assert cfg.level == "clip" and cfg.db_min == -report["fitted"]["range_db"]
    assert level_fit.check_shipped(fit, cfg) < 1e-5
