"""The clip-relative level: whole clips (files, stores) and the running reference (live)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from runtime.errors import S2IError
from runtime.frontend import (
    FrontEndConfig,
    RunningLevel,
    check_same_front_end,
    log_mel_batch,
    log_mel_clip,
    log_mel_db,
    to_uint8,
)

# small and fast: 8 kHz, the clip preset's level settings
CLIP = FrontEndConfig(sample_rate=8000, n_fft=256, n_mels=40, db_min=-35.0, db_max=0.0,
                      level="clip", decay_db_per_s=2.0)
FIXED = FrontEndConfig(sample_rate=8000, n_fft=256, n_mels=40)


def noise(seconds: float, amplitude: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(int(seconds * 8000))).astype(np.float32)


def test_earlier_fingerprints_are_unchanged_and_the_option_is_covered() -> None:
    """Settings added later stay out of to_dict at their defaults: every store, checkpoint
    and export made before keeps its fingerprint; the clip level changes it."""
    assert FrontEndConfig().fingerprint() == "a4ffc9a5874c3396"
    assert FrontEndConfig.preset("s2i-official").fingerprint() == "f6882a8a1eba4af8"
    assert "level" not in FrontEndConfig().to_dict()
    clip = FrontEndConfig.preset("s2i-official-clip")
    assert clip.to_dict()["level"] == "clip" and clip.name() == "s2i-official-clip"
    assert FrontEndConfig.from_dict(clip.to_dict()) == clip
    assert clip.fingerprint() != FrontEndConfig.preset("s2i-official").fingerprint()
    assert CLIP.fingerprint() != FrontEndConfig(**{**CLIP.__dict__, "decay_db_per_s": 1.0}
                                                ).fingerprint()
    with pytest.raises(S2IError, match="'s2i-official-clip', not 's2i-official'.*level"):
        check_same_front_end(FrontEndConfig.preset("s2i-official"), clip.to_dict(), "store S")


@pytest.mark.parametrize("settings, expected", [
    ({"level": "video"}, "level must be one of fixed, clip"),
    ({"decay_db_per_s": 1.0}, "decay_db_per_s is for level 'clip' only"),
    ({"level": "clip", "decay_db_per_s": -1.0}, r"decay_db_per_s must be a number in \[0"),
    ({"level": "clip", "decay_db_per_s": float("nan")}, "decay_db_per_s"),
])
def test_bad_level_settings_are_one_line(settings: dict, expected: str) -> None:
    with pytest.raises(S2IError, match=expected) as info:
        FrontEndConfig.from_dict({**FIXED.to_dict(), **settings})
    assert "\n" not in str(info.value)


def test_each_path_refuses_the_other_level() -> None:
    with pytest.raises(S2IError, match="log_mel_batch is for front ends of level 'fixed'"):
        log_mel_batch(noise(1, 0.1), CLIP)
    with pytest.raises(S2IError, match="RunningLevel is for front ends of level 'clip'"):
        RunningLevel(FIXED)
    with pytest.raises(S2IError, match="at least one whole window"):
        log_mel_clip(noise(0.5, 0.1), CLIP)
    with pytest.raises(S2IError, match="one mono clip"):
        log_mel_clip(np.zeros((2, 8000), np.float32), CLIP)


def test_clip_level_spans_the_clip_and_ignores_its_gain() -> None:
    """min -> 0 and max -> 255 over the clip; a quiet second stays darker than the loud one;
    the same clip at a tenth of the gain gives the same images (a fixed range does not)."""
    clip = np.concatenate([noise(1, 0.3), noise(2, 0.01, seed=1)])
    images = to_uint8(log_mel_clip(clip, CLIP))
    assert images.shape == (3, 40, 100)
    assert images.max() == 255 and images.min() == 0
    assert images[0].mean() > images[1].mean() + 20
    quiet = to_uint8(log_mel_clip(clip * 0.1, CLIP))
    assert np.abs(quiet.astype(int) - images).max() <= 1
    fixed = log_mel_clip(clip, FIXED)
    assert np.array_equal(fixed, log_mel_batch(clip.reshape(3, -1), FIXED))
    assert not np.allclose(log_mel_clip(clip * 0.1, FIXED), fixed)


def test_running_reference_follows_the_loudest_and_decays() -> None:
    windows = np.stack([noise(1, 0.3), noise(1, 0.01, 1), noise(1, 0.01, 2)])
    db_max = log_mel_db(windows, CLIP).reshape(3, -1).max(axis=1)
    level = RunningLevel(CLIP)
    features = level.features(windows, 1.0)
    assert level.reference == pytest.approx(max(db_max[0] - 2 * 2.0, db_max[2]))
    # the first window is relative to itself; a louder window lifts the reference at once
    assert to_uint8(features[0]).max() == 255
    louder = level.features(windows[:1] * 3, 1.0)
    assert level.reference == pytest.approx(db_max[0] + 20 * np.log10(3), abs=1e-3)
    assert to_uint8(louder).max() == 255
    # gain does not matter here either
    again = RunningLevel(CLIP).features(windows * 0.1, 1.0)
    assert np.abs(to_uint8(again).astype(int) - to_uint8(features)).max() <= 1


def test_pipeline_keeps_one_running_reference_per_stream() -> None:
    """A loud stream does not darken a quiet one: each stream has its own reference."""
    from runtime.serve.pipeline import Pipeline, Window

    translator = SimpleNamespace(manifest={"front_end": CLIP.to_dict(), "dropout": []},
                                 dropout=[], features="host", backend="none")
    quiet = [noise(1, 0.01, seed=s) for s in range(3)]
    loud = noise(1, 0.5, seed=9)
    alone = Pipeline(translator)
    mixed = Pipeline(translator)
    for i, window in enumerate(quiet):
        a = alone.features(SimpleNamespace(windows=[Window("q", window, 0.0, i + 1.0)],
                                           features=None, timings_ms={}))
        m = mixed.features(SimpleNamespace(windows=[Window("loud", loud, 0.0, i + 1.0),
                                                    Window("q", window, 0.0, i + 1.0)],
                                           features=None, timings_ms={}))
        assert np.array_equal(a.features[0], m.features[1])
        assert m.features.shape == (2, 1, 40, 100)
    assert set(mixed._levels) == {"loud", "q"}
