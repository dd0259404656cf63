"""The one log-mel front end (numpy only), shared by dataset building, training and the runtime.

A 1-s window of mono audio at ``sample_rate`` becomes a ``[n_mels, n_frames]`` = ``[128, 100]``
float32 array in [-1, 1]:

1. Frames: 25-ms periodic Hamming frames, 10-ms hop. Frame ``i`` (0..99) is centred on sample
   ``i*hop + hop/2`` of the window, so the 100 frames tile the second exactly; the window is
   reflect-padded by ``(win - hop)/2`` samples at each edge. The features therefore depend on
   the window's own samples only: a live window and the same second cut from a file give the
   same numbers, and the runtime needs no look-ahead.
2. ``|rfft(frame, n_fft)|^2`` integrated by Slaney-style triangular mel weights (area
   normalised, ``fmin``..``fmax``, default 0..sr/2), then ``10*log10(max(power, amin))``.
3. Fixed dB range with clipping: ``[db_min, db_max]`` -> ``[-1, 1]``. Anything at or below
   ``db_min`` (silence) is the floor -1; anything above ``db_max`` clips to 1.
   With ``level="clip"`` the range is instead relative to a reference level (docs/DATA.md,
   "Clip-relative level"): for a file, the loudest point of the whole clip, and the clip's
   quietest kept value maps to -1 (``log_mel_clip``: min -> 0, max -> 255 over the clip, as
   the authors' images); for a live stream, a running maximum that falls by
   ``decay_db_per_s`` (``RunningLevel``). ``log_mel_batch`` is the fixed-level path only.
4. Rows are flipped so row 0 is the HIGHEST band: the image convention of the official
   s2i_data spectrograms (low frequencies at the bottom). Their 8-bit form is
   ``round((x + 1) * 127.5)`` (``to_uint8``), read back with ``from_uint8``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import S2IError

FRONT_END_VERSION = 1
SUPPORTED_VERSIONS = (FRONT_END_VERSION,)
# generic bounds (any sensible front end fits; they only keep the arithmetic meaningful)
SAMPLE_RATE_RANGE = (1000, 768000)
MAX_WINDOW_SECONDS = 60.0
MAX_N_FFT = 1 << 20
LEVELS = ("fixed", "clip")
# settings added after version 1 was published: left out of to_dict (and so of the
# fingerprint) at these defaults, so every earlier store, checkpoint and export keeps its
# fingerprint
LATER_DEFAULTS: dict[str, Any] = {"level": "fixed", "decay_db_per_s": 0.0}


# Named front ends, as data (field -> value over the defaults). "s2i-official" is estimated from
# the official s2i_data spectrograms against real recordings (trainer/data/frontend_fit.py;
# docs/DATA.md, "The authors' front end"): the authors published no front-end code.
FRONT_END_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "s2i-official": {"sample_rate": 44100, "frame_ms": 1024 / 44.1, "n_fft": 1024,
                     "db_min": -17.5, "db_max": 22.5},
    # the same layout, level relative to each clip's maximum (files and stores) or to a
    # decaying running maximum (live streams); fitted in docs/DATA.md
    "s2i-official-clip": {"sample_rate": 44100, "frame_ms": 1024 / 44.1, "n_fft": 1024,
                          "db_min": -35.0, "db_max": 0.0, "level": "clip",
                          "decay_db_per_s": 0.25},
}
# what stores of the authors' JPG/bin spectrograms are stamped with unless told otherwise:
# their level was set per video (docs/DATA.md, "Clip-relative level")
AUTHORS_FRONT_END = "s2i-official-clip"


@dataclass(frozen=True)
class FrontEndConfig:
    """Every setting that decides the features; stored in each store, checkpoint and export."""

    version: int = FRONT_END_VERSION
    sample_rate: int = 16000
    window_seconds: float = 1.0
    frame_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int = 512
    n_mels: int = 128
    fmin: float = 0.0
    fmax: float | None = None  # None = sample_rate / 2
    amin: float = 1e-10
    db_min: float = -80.0
    db_max: float = 20.0
    level: str = "fixed"          # or "clip": db_min / db_max relative to a reference level
    decay_db_per_s: float = 0.0   # "clip" live streams: how fast the running maximum falls

    def __post_init__(self) -> None:
        """Range-check every setting (a hand-edited store, checkpoint or export manifest may
        hold anything): one ``S2IError`` line naming the setting, its value and the range."""
        if isinstance(self.version, bool) or not isinstance(self.version, int) \
                or self.version not in SUPPORTED_VERSIONS:
            raise S2IError(f"front end: version {self.version!r} is not supported; this S2I "
                           f"reads version {', '.join(map(str, SUPPORTED_VERSIONS))}")
        _integer(self, "sample_rate", *SAMPLE_RATE_RANGE)
        _number(self, "window_seconds", 0.0, MAX_WINDOW_SECONDS, low_open=True)
        _number(self, "frame_ms", 0.0, 1000.0 * MAX_WINDOW_SECONDS, low_open=True)
        _number(self, "hop_ms", 0.0, 1000.0 * MAX_WINDOW_SECONDS, low_open=True)
        _integer(self, "n_fft", 2, MAX_N_FFT)
        _integer(self, "n_mels", 1, MAX_N_FFT // 2 + 1)
        _number(self, "fmin", 0.0, self.sample_rate / 2)
        if self.fmax is not None:
            _number(self, "fmax", 0.0, self.sample_rate / 2, low_open=True)
        _number(self, "amin", 0.0, 1.0, low_open=True)
        _number(self, "db_min", -1000.0, 1000.0)
        _number(self, "db_max", -1000.0, 1000.0)
        if self.hop_length < 1 or self.win_length < 2:
            raise S2IError(f"front end: frame_ms {self.frame_ms} / hop_ms {self.hop_ms} give "
                           f"{self.win_length}-sample frames and {self.hop_length}-sample hops at "
                           f"{self.sample_rate} Hz; expected at least 2 and 1 samples")
        if self.hop_length > self.win_length:
            raise S2IError(f"front end: hop_ms ({self.hop_ms}) must not exceed frame_ms "
                           f"({self.frame_ms}): frames would leave gaps")
        if self.win_length > self.n_fft:
            raise S2IError(f"front end: frame of {self.win_length} samples is longer than "
                           f"n_fft={self.n_fft}; expected n_fft >= the frame length")
        if self.n_mels > self.n_fft // 2 + 1:
            raise S2IError(f"front end: n_mels={self.n_mels} exceeds the {self.n_fft // 2 + 1} "
                           f"frequency bins of n_fft={self.n_fft}")
        if self.fmin >= self.f_max:
            raise S2IError(f"front end: fmin ({self.fmin}) must be below fmax ({self.f_max}); "
                           f"expected 0 <= fmin < fmax <= sample_rate/2 = {self.sample_rate / 2}")
        if self.level not in LEVELS:
            raise S2IError(f"front end: level must be one of {', '.join(LEVELS)}, got "
                           f"{self.level!r}")
        _number(self, "decay_db_per_s", 0.0, 1000.0)
        if self.level == "fixed" and self.decay_db_per_s:
            raise S2IError("front end: decay_db_per_s is for level 'clip' only; expected 0 "
                           "with a fixed level")
        if self.db_max <= self.db_min:
            raise S2IError(f"front end: db_max ({self.db_max}) must exceed db_min ({self.db_min})")
        if self.n_samples < self.win_length:
            raise S2IError(f"front end: window of {self.n_samples} samples is shorter than one "
                           f"{self.win_length}-sample frame")
        if self.n_samples % self.hop_length:
            raise S2IError(f"front end: window of {self.n_samples} samples is not a whole "
                           f"number of {self.hop_length}-sample hops")

    @property
    def win_length(self) -> int:
        return int(round(self.sample_rate * self.frame_ms / 1000))

    @property
    def hop_length(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def n_samples(self) -> int:
        return int(round(self.sample_rate * self.window_seconds))

    @property
    def n_frames(self) -> int:
        return self.n_samples // self.hop_length

    @property
    def pad(self) -> int:
        """Samples of reflect padding before the window (``pad_after`` after it)."""
        return (self.win_length - self.hop_length) // 2

    @property
    def pad_after(self) -> int:
        """One more than ``pad`` when frame minus hop is odd (44.1 kHz: 1102 - 441), so the
        last of the ``n_frames`` frames still fits."""
        return self.win_length - self.hop_length - self.pad

    @property
    def f_max(self) -> float:
        return self.sample_rate / 2 if self.fmax is None else float(self.fmax)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key, default in LATER_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> FrontEndConfig:
        """A config from its ``to_dict`` form, checked (``S2IError`` on anything else)."""
        if not isinstance(data, dict):
            raise S2IError(f"front-end config should be an object of settings, got "
                           f"{type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise S2IError(f"front-end config has unknown settings {sorted(unknown)}; "
                           "it was written by a newer S2I")
        return cls(**data)

    def fingerprint(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @classmethod
    def preset(cls, name: str) -> FrontEndConfig:
        """A named front end (``FRONT_END_PRESETS``): ``default`` (this project's 16 kHz),
        ``s2i-official`` (the layout estimated from the authors' published spectrograms, a
        fixed dB range) or ``s2i-official-clip`` (that layout, the level relative to each
        clip's maximum: docs/DATA.md)."""
        if name not in FRONT_END_PRESETS:
            raise S2IError(f"unknown front-end preset '{name}'; expected one of "
                           f"{', '.join(sorted(FRONT_END_PRESETS))}")
        return cls(**FRONT_END_PRESETS[name])

    def name(self) -> str:
        """The preset this config is, or ``custom <fingerprint>``."""
        for name, values in FRONT_END_PRESETS.items():
            if FrontEndConfig(**values) == self:
                return name
        return f"custom {self.fingerprint()}"


def _integer(cfg: FrontEndConfig, name: str, low: int, high: int) -> None:
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise S2IError(f"front end: {name} must be an integer in [{low}, {high}], got "
                       f"{value!r}")


def _number(cfg: FrontEndConfig, name: str, low: float, high: float,
            low_open: bool = False) -> None:
    """A finite real in [low, high] (or (low, high]); ints become floats (one canonical
    form, so that fingerprints of equal configs are equal)."""
    value = getattr(cfg, name)
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) \
        and math.isfinite(value) and (low < value if low_open else low <= value) \
        and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise S2IError(f"front end: {name} must be a number in {bracket}{low:g}, {high:g}], "
                       f"got {value!r}")
    object.__setattr__(cfg, name, float(value))


def check_same_front_end(expected: FrontEndConfig | dict[str, Any],
                         actual: FrontEndConfig | dict[str, Any], what: str) -> None:
    """Refuse to mix features computed by different front ends."""
    a = expected if isinstance(expected, FrontEndConfig) else FrontEndConfig.from_dict(expected)
    b = actual if isinstance(actual, FrontEndConfig) else FrontEndConfig.from_dict(actual)
    if a != b:
        diff = [f"{k}: {v} vs {getattr(b, k)}" for k, v in dataclasses.asdict(a).items()
                if getattr(b, k) != v]
        raise S2IError(f"{what} was made with front end '{b.name()}', not '{a.name()}' "
                       f"({'; '.join(diff)})")


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    mel = freq / f_sp
    return np.where(freq >= min_log_hz,
                    min_log_hz / f_sp + np.log(np.maximum(freq, 1e-12) / min_log_hz) / logstep,
                    mel)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    f_sp = 200.0 / 3
    min_log_hz, logstep = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                    f_sp * mel)


def mel_filterbank(cfg: FrontEndConfig) -> np.ndarray:
    """``[n_mels, n_fft//2 + 1]`` triangular weights, each band normalised to unit area."""
    fft_freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.fmin), hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_freqs[None] - lower) / (centre - lower)
    falling = (upper - fft_freqs[None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (upper - lower))
    return weights.astype(np.float32)


def hamming(n: int) -> np.ndarray:
    """Periodic Hamming window (the STFT convention)."""
    return (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


_CACHE: dict[FrontEndConfig, tuple[np.ndarray, np.ndarray]] = {}


def _tables(cfg: FrontEndConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg not in _CACHE:
        _CACHE[cfg] = (hamming(cfg.win_length), mel_filterbank(cfg))
    return _CACHE[cfg]


def _check_audio(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.dtype.kind not in "fiu":
        raise S2IError(f"audio must be numeric samples, got dtype {audio.dtype}")
    if audio.ndim not in (1, 2):
        raise S2IError(f"audio must be mono samples [n] or a batch [B, n], got shape {audio.shape}")
    if audio.shape[-1] != cfg.n_samples:
        raise S2IError(f"audio window has {audio.shape[-1]} samples; the front end expects exactly "
                       f"{cfg.n_samples} ({cfg.window_seconds:g} s at {cfg.sample_rate} Hz)")
    audio = audio.astype(np.float32, copy=False)
    if not np.isfinite(audio).all():
        raise S2IError("audio contains NaN or infinite samples; expected finite floats in [-1, 1]")
    return audio


CHUNK_WINDOWS = 4     # windows per FFT pass: larger passes fall out of cache (3-5x slower)


def log_mel_batch(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """``[B, n_samples]`` mono float audio -> ``[B, n_mels, n_frames]`` float32 in [-1, 1]
    (a fixed-level front end; ``log_mel_clip`` / ``RunningLevel`` for level "clip")."""
    _check_level(cfg, "fixed", "log_mel_batch")
    audio = _check_audio(audio, cfg)
    if audio.ndim == 1:
        audio = audio[None]
    if len(audio) <= CHUNK_WINDOWS:
        return _log_mel_rows(audio, cfg)
    return np.concatenate([_log_mel_rows(audio[i:i + CHUNK_WINDOWS], cfg)
                           for i in range(0, len(audio), CHUNK_WINDOWS)])


def _log_mel_rows(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    db = _mel_db_rows(audio, cfg)
    scaled = (np.clip(db, cfg.db_min, cfg.db_max) - cfg.db_min) / (cfg.db_max - cfg.db_min)
    return (scaled * 2.0 - 1.0)[:, ::-1, :].astype(np.float32)


def _mel_db_rows(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """``[B, n_samples]`` -> mel power in dB ``[B, mels, T]`` (band 0 lowest)."""
    window, fbank = _tables(cfg)
    padded = np.pad(audio, ((0, 0), (cfg.pad, cfg.pad_after)), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, cfg.win_length, axis=1)
    frames = frames[:, :: cfg.hop_length][:, : cfg.n_frames]          # [B, T, win]
    spectrum = np.fft.rfft(frames * window, n=cfg.n_fft, axis=-1)     # [B, T, bins]
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    # One BLAS matrix product (an einsum here took ~7 of a window's ~11 ms; benchmarks serve).
    mel = np.matmul(power, fbank.T).transpose(0, 2, 1)               # [B, mels, T]
    return 10.0 * np.log10(np.maximum(mel, cfg.amin))


def log_mel_db(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """``[B, n_samples]`` (or one window) -> unscaled mel dB ``[B, n_mels, n_frames]``
    float32, band 0 the LOWEST (the rows are not flipped yet)."""
    audio = _check_audio(audio, cfg)
    if audio.ndim == 1:
        audio = audio[None]
    return np.concatenate([_mel_db_rows(audio[i:i + CHUNK_WINDOWS], cfg)
                           for i in range(0, len(audio), CHUNK_WINDOWS)])


def scale_relative(db: np.ndarray, cfg: FrontEndConfig, reference: np.ndarray,
                   lowest: np.ndarray | None = None) -> np.ndarray:
    """dB ``[B, mels, T]`` (band 0 lowest) -> ``[-1, 1]`` features (row 0 highest) with the
    range ``reference + [db_min, db_max]`` per window (``reference`` ``[B]``). ``lowest``
    ``[B]``, when given, raises the bottom of the range to it (the clip's quietest value:
    min -> -1 over a clip whose range is narrower than ``db_max - db_min``)."""
    high = (np.asarray(reference, np.float64) + cfg.db_max)[:, None, None]
    low = (np.asarray(reference, np.float64) + cfg.db_min)[:, None, None]
    if lowest is not None:
        low = np.minimum(np.maximum(low, np.asarray(lowest, np.float64)[:, None, None]),
                         high - 1e-6)
    scaled = (np.clip(db, low, high) - low) / (high - low)
    return (scaled * 2.0 - 1.0)[:, ::-1, :].astype(np.float32)


def _check_level(cfg: FrontEndConfig, want: str, what: str) -> None:
    if cfg.level != want:
        raise S2IError(f"{what} is for front ends of level '{want}'; front end "
                       f"'{cfg.name()}' has level '{cfg.level}'")


def log_mel_clip(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """A whole clip (mono ``[n]``, at least one window) -> its whole 1-s windows
    ``[W, n_mels, n_frames]`` in [-1, 1], the level relative to the CLIP: the range is
    ``clip max + [db_min, db_max]``, its bottom raised to the clip's quietest value inside
    it, so the clip's max is 1 (255) and its min -1 (0). Each window is framed from its own
    samples, exactly as ``log_mel_batch`` frames it; only the level differs. A fixed-level
    front end gives ``log_mel_batch`` of the windows."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise S2IError(f"log_mel_clip takes one mono clip [n], got shape {audio.shape}")
    windows = audio.shape[0] // cfg.n_samples
    if windows == 0:
        raise S2IError(f"clip has {audio.shape[0]} samples; the front end needs at least one "
                       f"whole window of {cfg.n_samples}")
    cut = audio[: windows * cfg.n_samples].reshape(windows, cfg.n_samples)
    if cfg.level == "fixed":
        return log_mel_batch(cut, cfg)
    db = log_mel_db(cut, cfg)
    top = float(db.max())
    kept = db[db >= top + cfg.db_min]
    reference = np.full(windows, top)
    return scale_relative(db, cfg, reference, np.full(windows, float(kept.min())))


class RunningLevel:
    """The clip-relative level for a live stream, where no whole clip exists: the reference
    is the loudest dB value seen so far, falling by ``cfg.decay_db_per_s`` per second of
    stream and lifted at once by any louder window. One per stream; feed its windows in
    order (``features(windows, seconds)``, ``seconds`` between consecutive window ends)."""

    def __init__(self, cfg: FrontEndConfig) -> None:
        _check_level(cfg, "clip", "RunningLevel")
        self.cfg = cfg
        self.reference: float | None = None

    def update(self, window_max_db: float, seconds: float) -> float:
        decayed = -np.inf if self.reference is None \
            else self.reference - self.cfg.decay_db_per_s * max(0.0, seconds)
        self.reference = float(max(window_max_db, decayed))
        return self.reference

    def features(self, windows: np.ndarray, seconds: float | np.ndarray) -> np.ndarray:
        """``[B, n_samples]`` consecutive windows -> ``[B, n_mels, n_frames]`` in [-1, 1];
        ``seconds`` (scalar or ``[B]``) since the previous window ended."""
        db = log_mel_db(windows, self.cfg)
        gaps = np.broadcast_to(np.asarray(seconds, np.float64), (len(db),))
        reference = np.array([self.update(float(d.max()), float(g))
                              for d, g in zip(db, gaps, strict=True)])
        return scale_relative(db, self.cfg, reference)


def log_mel(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """One 1-s window ``[n_samples]`` -> ``[n_mels, n_frames]`` float32 in [-1, 1]."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise S2IError(f"log_mel takes one mono window [n], got shape {audio.shape}; "
                       "mix channels down first or use log_mel_batch")
    return log_mel_batch(audio, cfg)[0]


def pad_or_trim(audio: np.ndarray, cfg: FrontEndConfig) -> np.ndarray:
    """Fit a clip to exactly one window: zero-pad a short clip at the end, cut a long one."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.shape[-1] >= cfg.n_samples:
        return audio[..., : cfg.n_samples]
    pad = [(0, 0)] * (audio.ndim - 1) + [(0, cfg.n_samples - audio.shape[-1])]
    return np.pad(audio, pad)


def to_uint8(features: np.ndarray) -> np.ndarray:
    """[-1, 1] features -> the official 8-bit spectrogram convention."""
    return np.round((np.clip(features, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def from_uint8(data: np.ndarray) -> np.ndarray:
    """8-bit spectrograms (JPG / binary batches / stores) -> float32 in [-1, 1]."""
    return np.asarray(data, dtype=np.float32) / 127.5 - 1.0
