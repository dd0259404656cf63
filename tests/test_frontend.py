"""The log-mel front end against an independent reference (torch.stft + a mel filterbank
written here from the formulas), plus edge cases and the 8-bit convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from runtime.errors import S2IError
from runtime.frontend import (
    FrontEndConfig,
    check_same_front_end,
    from_uint8,
    log_mel,
    log_mel_batch,
    pad_or_trim,
    to_uint8,
)

CFG = FrontEndConfig()


# ----------------------------------------------------------------- independent reference

def slaney_hz_to_mel(hz: float) -> float:
    """Slaney (Auditory Toolbox) mel: 3 mels per 200 Hz below 1 kHz, log-spaced above."""
    if hz < 1000.0:
        return 3.0 * hz / 200.0
    return 15.0 + 27.0 * math.log(hz / 1000.0) / math.log(6.4)


def slaney_mel_to_hz(mel: float) -> float:
    if mel < 15.0:
        return 200.0 * mel / 3.0
    return 1000.0 * 6.4 ** ((mel - 15.0) / 27.0)


def reference_filterbank(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangles between mel-equidistant edges, each scaled to unit area (2 / width in Hz)."""
    m_lo, m_hi = slaney_hz_to_mel(0.0), slaney_hz_to_mel(sr / 2)
    edges = [slaney_mel_to_hz(m_lo + (m_hi - m_lo) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    bank = np.zeros((n_mels, n_fft // 2 + 1))
    for band in range(n_mels):
        lo, mid, hi = edges[band], edges[band + 1], edges[band + 2]
        for b in range(n_fft // 2 + 1):
            f = b * sr / n_fft
            if lo < f < hi:
                weight = (f - lo) / (mid - lo) if f <= mid else (hi - f) / (hi - mid)
                bank[band, b] = weight * 2.0 / (hi - lo)
    return bank


def reference_log_mel(audio: np.ndarray, cfg: FrontEndConfig = CFG) -> np.ndarray:
    """torch.stft on the reflect-padded window; frame i centred on sample i*hop + hop/2."""
    win, hop, n_fft = cfg.win_length, cfg.hop_length, cfg.n_fft
    x = torch.from_numpy(audio.astype(np.float64))
    side = (win - hop) // 2
    x = torch.nn.functional.pad(x[None, None], (side, side), mode="reflect")[0, 0]
    # torch.stft centres a short window inside n_fft: shift so frame i starts at i*hop
    shift = (n_fft - win) // 2
    x = torch.nn.functional.pad(x, (shift, n_fft - win - shift))
    window = torch.hamming_window(win, periodic=True, dtype=torch.float64)
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, window=window,
                      center=False, return_complex=True)
    power = spec.abs().numpy() ** 2                                   # [bins, frames]
    assert power.shape[1] == cfg.n_frames
    mel = reference_filterbank(cfg.sample_rate, n_fft, cfg.n_mels) @ power
    db = 10 * np.log10(np.maximum(mel, cfg.amin))
    x01 = (np.clip(db, cfg.db_min, cfg.db_max) - cfg.db_min) / (cfg.db_max - cfg.db_min)
    return (2 * x01 - 1)[::-1]


def test_slaney_constants() -> None:
    assert slaney_hz_to_mel(1000.0) == pytest.approx(15.0)
    assert slaney_mel_to_hz(slaney_hz_to_mel(5000.0)) == pytest.approx(5000.0)


@pytest.mark.parametrize("kind", ["noise", "chirp", "speechlike"])
def test_matches_independent_reference(kind: str) -> None:
    rng = np.random.default_rng(1)
    t = np.arange(CFG.n_samples) / CFG.sample_rate
    if kind == "noise":
        audio = 0.3 * rng.standard_normal(CFG.n_samples)
    elif kind == "chirp":
        audio = 0.5 * np.sin(2 * np.pi * (100 * t + 3500 * t**2))
    else:
        audio = sum(0.2 / k * np.sin(2 * np.pi * 180 * k * t) for k in range(1, 12))
        audio = audio * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(
            t.size)
    ours = log_mel(audio.astype(np.float32), CFG)
    ref = reference_log_mel(audio)
    assert ours.shape == (128, 100) and ours.dtype == np.float32
    # float32 (ours) vs float64 (reference): far below one 8-bit step (1/127.5)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.abs(to_uint8(ours).astype(int) - to_uint8(ref)).max() <= 1


def test_tone_lands_in_its_band_low_rows_at_bottom() -> None:
    t = np.arange(CFG.n_samples) / CFG.sample_rate
    top = slaney_hz_to_mel(CFG.sample_rate / 2)
    for freq in (300.0, 1000.0, 4000.0):
        feats = log_mel((0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32), CFG)
        band = CFG.n_mels - 1 - int(np.argmax(feats[:, 50]))      # row 0 = highest band
        centre = slaney_mel_to_hz(top * (band + 1) / (CFG.n_mels + 1))
        assert abs(centre - freq) < max(50.0, 0.08 * freq), f"{freq} Hz peaked at {centre} Hz"


def test_frame_alignment_impulse() -> None:
    """Frame i covers samples [i*hop - 150, i*hop + 250): an impulse at 8000 lights 49 and 50."""
    audio = np.zeros(CFG.n_samples, np.float32)
    audio[8000] = 1.0
    feats = log_mel(audio, CFG)
    lit = np.flatnonzero(feats.max(axis=0) > -1.0)
    assert lit.tolist() == [49, 50]


def test_silence_is_floor() -> None:
    feats = log_mel(np.zeros(CFG.n_samples, np.float32), CFG)
    assert np.all(feats == -1.0)
    assert np.all(to_uint8(feats) == 0)


def test_loud_input_clips_to_one() -> None:
    rng = np.random.default_rng(0)
    loud = np.clip(50 * rng.standard_normal(CFG.n_samples), -40, 40).astype(np.float32)
    feats = log_mel(loud, CFG)
    assert feats.max() == 1.0 and feats.min() >= -1.0
    assert np.mean(feats == 1.0) > 0.5


def test_dc_sits_in_the_lowest_band() -> None:
    feats = log_mel(np.full(CFG.n_samples, 0.5, np.float32), CFG)
    assert np.all(np.isfinite(feats))
    lowest, top_half = feats[-1], feats[: CFG.n_mels // 2]
    assert lowest.min() > top_half.max() + 0.3


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_a_clear_error(bad: float) -> None:
    audio = np.zeros(CFG.n_samples, np.float32)
    audio[123] = bad
    with pytest.raises(S2IError, match="NaN or infinite"):
        log_mel(audio, CFG)


def test_short_input_errors_and_pad_or_trim_fits() -> None:
    short = np.ones(4000, np.float32) * 0.1
    with pytest.raises(S2IError, match="16000"):
        log_mel(short, CFG)
    fitted = pad_or_trim(short, CFG)
    assert fitted.shape == (CFG.n_samples,) and np.all(fitted[4000:] == 0)
    assert log_mel(fitted, CFG).shape == (128, 100)
    assert pad_or_trim(np.ones(20000, np.float32), CFG).shape == (CFG.n_samples,)


def test_wrong_shapes_and_types_are_clear_errors() -> None:
    with pytest.raises(S2IError, match="mono"):
        log_mel(np.zeros((2, CFG.n_samples), np.float32), CFG)
    with pytest.raises(S2IError, match="numeric"):
        log_mel(np.array(["a"] * CFG.n_samples), CFG)


def test_batch_equals_single_windows() -> None:
    rng = np.random.default_rng(3)
    batch = (0.2 * rng.standard_normal((3, CFG.n_samples))).astype(np.float32)
    together = log_mel_batch(batch, CFG)
    for i in range(3):
        assert np.array_equal(together[i], log_mel(batch[i], CFG))


def test_uint8_round_trip() -> None:
    every = np.arange(256, dtype=np.uint8)
    assert np.array_equal(to_uint8(from_uint8(every)), every)
    x = np.linspace(-1, 1, 1001, dtype=np.float32)
    assert np.abs(from_uint8(to_uint8(x)) - x).max() <= 0.5 / 127.5 + 1e-6
    assert to_uint8(np.array([-3.0, 3.0])).tolist() == [0, 255]


def test_config_round_trip_and_mismatch() -> None:
    other = FrontEndConfig(db_min=-90.0)
    assert FrontEndConfig.from_dict(CFG.to_dict()) == CFG
    assert CFG.fingerprint() != other.fingerprint()
    check_same_front_end(CFG, CFG.to_dict(), "store")
    with pytest.raises(S2IError, match="db_min"):
        check_same_front_end(CFG, other, "checkpoint")
    with pytest.raises(S2IError, match="unknown"):
        FrontEndConfig.from_dict({**CFG.to_dict(), "colour": 1})
