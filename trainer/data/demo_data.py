"""The built-in demo set: procedural sounds paired with scenes that depend on them.

Five classes mirror the paper's VEGAS subset. Every 1-s clip is synthesized from a few
parameters drawn from a seeded generator, and its 96x96 RGB scene is drawn from the
SAME parameters, so the picture is a function of what can be heard:

==================  ===============================  ======================================
class               sound                            scene (what the sound decides)
==================  ===============================  ======================================
Baby cry            harmonic wails, vibrato, glides  nursery; head height = pitch, head
                                                     size = loudness, cry arcs = wails
Dog                 short harmonic barks in rhythm   park; one dog per bark, dog size =
                                                     bark pitch (low = big)
Rail transport      clacks over a low rumble         station; wagons = clack rate, train
                                                     height = rumble pitch
Fireworks           bangs, noisy decays, crackle     night; one burst per bang, x = bang
                                                     time, radius = bang strength, gold =
                                                     long crackle
Water flowing       filtered noise with bubbles      river; water colour = noise
                                                     brightness, foam specks = bubble rate
==================  ===============================  ======================================

Across all classes loudness also sets the overall brightness. Clips group into
pseudo-videos (shared palette and base parameters, jittered per 1-s window), and the
store is split by video, like the real data. Everything is deterministic from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from runtime.frontend import FrontEndConfig, log_mel_batch, to_uint8
from trainer.data.prepare_common import DEMO_SIZES, VEGAS_CLASSES, DemoSizes, segment_id

DEMO_CLASSES = VEGAS_CLASSES   # the demo mirrors the paper's VEGAS subset
IMAGE_SIZE = 96
DEMO_SAMPLE_RATE = 16000


@dataclass
class ClipParams:
    """Everything that decides one clip's sound and scene."""

    class_index: int
    loud: float                                  # 0.35..1: peak level and brightness
    palette: tuple[int, int, int]                # per-video colour
    layout: float                                # per-video horizontal placement, 0..1
    values: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- parameters

def _video_base(class_index: int, rng: np.random.Generator) -> dict[str, float]:
    """Slow parameters shared by all windows of one pseudo-video."""
    if class_index == 0:
        return {"pitch": rng.uniform(300, 620), "vib_rate": rng.uniform(4.5, 7.5)}
    if class_index == 1:
        return {"pitch": rng.uniform(350, 950), "interval": rng.uniform(0.16, 0.3)}
    if class_index == 2:
        return {"rate": rng.uniform(1.5, 6.5), "rumble": rng.uniform(40, 110)}
    if class_index == 3:
        return {"bangs": rng.uniform(1, 5.5), "tau": rng.uniform(0.04, 0.22)}
    return {"cutoff": rng.uniform(1200, 6500), "bubbles": rng.uniform(3, 30)}


def _window_params(class_index: int, base: dict[str, float], palette: tuple[int, int, int],
                   layout: float, rng: np.random.Generator) -> ClipParams:
    """One 1-s window: the video's base parameters jittered, events redrawn."""
    def jitter(x: float, rel: float = 0.08) -> float:
        return float(x * (1 + rng.uniform(-rel, rel)))

    loud = float(rng.uniform(0.35, 1.0))
    v: dict[str, Any] = {}
    if class_index == 0:
        v["pitch"] = jitter(base["pitch"])
        v["vib_rate"] = jitter(base["vib_rate"])
        v["wails"] = int(rng.integers(1, 4))
        v["glide"] = float(rng.uniform(-0.25, 0.35))
    elif class_index == 1:
        v["pitch"] = jitter(base["pitch"])
        v["barks"] = int(rng.integers(1, 5))
        v["interval"] = jitter(base["interval"])
        v["start"] = float(rng.uniform(0.02, 0.2))
    elif class_index == 2:
        v["rate"] = jitter(base["rate"], 0.15)
        v["rumble"] = jitter(base["rumble"])
        v["phase"] = float(rng.uniform(0, 1))
    elif class_index == 3:
        n = int(np.clip(round(base["bangs"] + rng.uniform(-1, 1)), 1, 5))
        v["times"] = sorted(float(t) for t in rng.uniform(0.03, 0.85, n))
        v["strengths"] = [float(s) for s in rng.uniform(0.4, 1.0, n)]
        v["tau"] = jitter(base["tau"], 0.2)
        v["heights"] = [float(h) for h in rng.uniform(0.15, 0.55, n)]
    else:
        v["cutoff"] = jitter(base["cutoff"], 0.12)
        v["bubbles"] = jitter(base["bubbles"], 0.2)
    return ClipParams(class_index, loud, palette, layout, v)


def _video_rng(seed: int, class_index: int, video: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence((int(seed), int(class_index),
                                                         int(video))))


def clip_params(class_index: int, seed: int, window: int = 0) -> ClipParams:
    """Parameters of window ``window`` of pseudo-video ``seed`` of a class."""
    if not 0 <= class_index < len(DEMO_CLASSES):
        raise ValueError(f"class_index must be 0..{len(DEMO_CLASSES) - 1}, got {class_index}")
    video_rng = _video_rng(seed, class_index, 0)
    base = _video_base(class_index, video_rng)
    palette = tuple(int(c) for c in video_rng.integers(0, 256, 3))
    layout = float(video_rng.uniform(0, 1))
    window_rng = np.random.default_rng(np.random.SeedSequence((int(seed), int(class_index),
                                                               1, int(window))))
    return _window_params(class_index, base, palette, layout, window_rng)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- sound

def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float, sr: int,
                tilt: float = 0.0) -> np.ndarray:
    """White noise band-limited to ``lo..hi`` Hz (FFT mask), ``tilt`` dB/octave slope."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    mask = ((freqs >= lo) & (freqs <= hi)).astype(np.float64)
    if tilt:
        mask *= (np.maximum(freqs, 20.0) / 1000.0) ** (tilt / 6.02)
    out = np.fft.irfft(spectrum * mask, n)
    return out / (np.abs(out).max() + 1e-12)


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
    return 2 * np.pi * np.cumsum(freq) / sr


def _decay(t: np.ndarray, start: float, tau: float, attack: float = 0.003) -> np.ndarray:
    dt = t - start
    env = np.where(dt < 0, 0.0, np.exp(-np.maximum(dt, 0) / tau))
    return env * np.clip(dt / attack, 0, 1)


def _baby(p: ClipParams, t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    v = p.values
    out = np.zeros_like(t)
    edges = np.linspace(0.03, 0.97, v["wails"] + 1)
    for start, stop in zip(edges[:-1], edges[1:], strict=True):
        length = (stop - start) * rng.uniform(0.7, 0.92)
        u = np.clip((t - start) / length, 0, 1)
        inside = (t >= start) & (t <= start + length)
        contour = 1 + v["glide"] * np.sin(np.pi * u) - 0.12 * u
        vibrato = 1 + 0.03 * np.sin(2 * np.pi * v["vib_rate"] * t)
        f0 = v["pitch"] * contour * vibrato
        phase = _phase(f0, sr)
        wail = np.zeros_like(t)
        for k in range(1, 11):
            fk = k * v["pitch"]
            weight = np.exp(-(((fk - 1200) / 900) ** 2)) + 0.5 * np.exp(-(((fk - 3000)
                                                                              / 700) ** 2))
            wail += (weight + 0.15 / k) * np.sin(k * phase)
        env = np.sin(np.pi * u) ** 0.4 * inside
        out += wail * env
    out += 0.03 * _band_noise(rng, t.size, 1500, 6000, sr) * (np.abs(out) > 0)
    return out


def _dog(p: ClipParams, t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    v = p.values
    out = np.zeros_like(t)
    noise = _band_noise(rng, t.size, 400, 3500, sr)
    for i in range(v["barks"]):
        start = v["start"] + i * v["interval"]
        length = rng.uniform(0.08, 0.13)
        u = np.clip((t - start) / length, 0, 1)
        f0 = v["pitch"] * (1.25 - 0.45 * u)
        phase = _phase(f0, sr)
        bark = np.zeros_like(t)
        for k in range(1, 9):
            fk = k * v["pitch"]
            weight = np.exp(-(((fk - 1100) / 600) ** 2)) + 0.6 * np.exp(-(((fk - 2400)
                                                                              / 500) ** 2))
            bark += (weight + 0.2 / k) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
        env = _decay(t, start, length / 2.5, attack=0.006)
        out += (bark + 0.5 * noise) * env
    return out


def _rail(p: ClipParams, t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    v = p.values
    rumble = 0.5 * _band_noise(rng, t.size, 20, 260, sr, tilt=-6)
    rumble += 0.35 * np.sin(_phase(np.full_like(t, v["rumble"]), sr)) * (
        1 + 0.3 * np.sin(2 * np.pi * 1.3 * t))
    clicks = np.zeros_like(t)
    period = 1.0 / v["rate"]
    start = v["phase"] * period
    ring = 2 * np.pi * rng.uniform(1500, 3000)
    while start < 1.0:
        for offset, gain in ((0.0, 1.0), (0.07, 0.8)):
            s = start + offset
            env = _decay(t, s, 0.012, attack=0.0005)
            clicks += gain * env * (np.sin(ring * (t - s)) + 0.6 * rng.standard_normal(t.size))
        start += period
    return rumble + 0.9 * clicks


def _fireworks(p: ClipParams, t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    v = p.values
    out = 0.01 * rng.standard_normal(t.size)
    boom_noise = _band_noise(rng, t.size, 30, 4000, sr, tilt=-3)
    for when, strength in zip(v["times"], v["strengths"], strict=True):
        out += strength * boom_noise * _decay(t, when, v["tau"])
        out += strength * 0.6 * np.sin(2 * np.pi * 55 * (t - when)) * _decay(t, when, 0.08)
        n_crackle = int(30 * v["tau"] / 0.15)
        for c in rng.uniform(when + 0.05, when + 0.05 + 2.5 * v["tau"], n_crackle):
            start = int(c * sr)
            piece = out[start:start + int(0.015 * sr)]            # a view: 15 ms is enough
            local = np.arange(piece.size) / sr
            piece += 0.25 * strength * np.exp(-local / 0.002) * rng.standard_normal(piece.size)
    return out


def _water(p: ClipParams, t: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    v = p.values
    flow = _band_noise(rng, t.size, 150, v["cutoff"], sr, tilt=-2)
    flow *= 1 + 0.25 * np.sin(2 * np.pi * rng.uniform(0.5, 2) * t + rng.uniform(0, 6))
    bubbles = np.zeros_like(t)
    for when in rng.uniform(0, 0.97, rng.poisson(v["bubbles"])):
        f_start = rng.uniform(500, 1800)
        dur = rng.uniform(0.012, 0.035)
        start = int(when * sr)
        piece = bubbles[start:start + int(3 * dur * sr)]          # a view of the bubble's span
        local = np.arange(piece.size) / sr
        f = f_start * (1 + 0.6 * np.clip(local / dur, 0, 1))
        piece += _decay(local, 0.0, dur / 2.5, attack=0.001) * np.sin(_phase(f, sr))
    return 0.5 * flow + 0.8 * bubbles


_SOUNDS = (_baby, _dog, _rail, _fireworks, _water)


def render_audio(params: ClipParams, sample_rate: int = DEMO_SAMPLE_RATE,
                 seconds: float = 1.0, noise_seed: int = 0) -> np.ndarray:
    """The clip's sound: float32 mono, peak = 0.9 * loudness."""
    n = int(round(sample_rate * seconds))
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(np.random.SeedSequence((int(noise_seed), params.class_index,
                                                        7)))
    audio = _SOUNDS[params.class_index](params, t, sample_rate, rng)
    fade = np.minimum(1, np.minimum(np.arange(n), np.arange(n)[::-1]) / (0.004 * sample_rate))
    audio = audio * fade
    audio = audio / (np.abs(audio).max() + 1e-12) * 0.9 * params.loud
    return audio.astype(np.float32)


# --------------------------------------------------------------------------- scenes

def _mix(a: tuple[int, int, int], b: tuple[int, int, int], w: float) -> tuple[int, int, int]:
    return tuple(int(round(x * (1 - w) + y * w)) for x, y in zip(a, b, strict=True))  # type: ignore


def _scene_baby(p: ClipParams, d: ImageDraw.ImageDraw) -> None:
    v = p.values
    wall = _mix((246, 196, 214), p.palette, 0.25)
    d.rectangle([0, 0, 95, 95], fill=wall)
    d.rectangle([0, 72, 95, 95], fill=(214, 186, 150))
    for x in range(4, 96, 12):
        d.rectangle([x, 40, x + 2, 76], fill=(150, 104, 70))
    d.rectangle([0, 38, 95, 41], fill=(150, 104, 70))
    pitch01 = (v["pitch"] - 280) / 370
    cy = 68 - 40 * pitch01
    r = 9 + 9 * p.loud
    cx = 28 + 40 * p.layout
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 214, 176), outline=(200, 150, 120))
    d.ellipse([cx - r * 0.45 - 2, cy - r * 0.3 - 2, cx - r * 0.45 + 2, cy - r * 0.3 + 2],
              fill=(60, 40, 40))
    d.ellipse([cx + r * 0.45 - 2, cy - r * 0.3 - 2, cx + r * 0.45 + 2, cy - r * 0.3 + 2],
              fill=(60, 40, 40))
    mouth = 2 + 4 * p.loud
    d.ellipse([cx - mouth, cy + r * 0.35 - mouth * 0.7, cx + mouth, cy + r * 0.35 + mouth * 0.7],
              fill=(170, 40, 60))
    for i in range(v["wails"]):
        rr = r + 5 + 5 * i
        d.arc([cx - rr, cy - rr, cx + rr, cy + rr], start=-50, end=50, fill=(250, 200, 40),
              width=2)


def _scene_dog(p: ClipParams, d: ImageDraw.ImageDraw) -> None:
    v = p.values
    d.rectangle([0, 0, 95, 95], fill=_mix((150, 200, 240), p.palette, 0.15))
    d.rectangle([0, 58, 95, 95], fill=_mix((70, 150, 60), p.palette, 0.15))
    fur = _mix((140, 90, 45), p.palette, 0.3)
    n = v["barks"]
    size = 1.25 - 0.7 * (v["pitch"] - 330) / 660          # low bark = big dog
    for i in range(n):
        cx = (i + 0.5) * 96 / n + (p.layout - 0.5) * 8
        base = 84 - 4 * (i % 2)
        bw, bh = 11 * size, 6 * size
        d.rectangle([cx - bw * 0.8, base - 2, cx - bw * 0.6, base + 6 * size], fill=fur)
        d.rectangle([cx + bw * 0.6, base - 2, cx + bw * 0.8, base + 6 * size], fill=fur)
        d.ellipse([cx - bw, base - 2 * bh, cx + bw, base], fill=fur)
        hx, hy, hr = cx + bw * 0.95, base - 2 * bh - 2 * size, 5 * size
        d.ellipse([hx - hr, hy - hr, hx + hr, hy + hr], fill=fur)
        d.ellipse([hx - hr * 0.9, hy - hr * 0.9, hx - hr * 0.2, hy + hr * 0.6],
                  fill=(70, 40, 20))


def _scene_rail(p: ClipParams, d: ImageDraw.ImageDraw) -> None:
    v = p.values
    d.rectangle([0, 0, 95, 95], fill=(176, 180, 188))
    d.rectangle([0, 70, 95, 95], fill=(120, 110, 100))
    for x in range(0, 96, 6):
        d.rectangle([x, 80, x + 3, 90], fill=(90, 70, 50))
    d.rectangle([0, 81, 95, 82], fill=(60, 60, 64))
    d.rectangle([0, 88, 95, 89], fill=(60, 60, 64))
    wagons = int(np.clip(round(v["rate"] - 0.9), 1, 6))
    height = 16 + 30 * (v["rumble"] - 36) / 80
    colour = _mix((190, 40, 40), p.palette, 0.35)
    wagon_w = 86 / wagons
    x0 = 5 + (p.layout - 0.5) * 6
    for i in range(wagons):
        left = x0 + i * wagon_w
        d.rectangle([left + 1, 80 - height, left + wagon_w - 1, 80], fill=colour,
                    outline=(40, 30, 30))
        for wx in np.arange(left + 4, left + wagon_w - 6, 7):
            d.rectangle([wx, 80 - height * 0.85, wx + 4, 80 - height * 0.55],
                        fill=(230, 230, 200))


def _scene_fireworks(p: ClipParams, d: ImageDraw.ImageDraw) -> None:
    v = p.values
    d.rectangle([0, 0, 95, 95], fill=_mix((10, 12, 40), p.palette, 0.08))
    rng = np.random.default_rng(int(p.layout * 1e6))
    for x in range(0, 96, 8):
        top = 78 - int(rng.integers(0, 14))
        d.rectangle([x, top, x + 7, 95], fill=(15, 15, 20))
    gold = v["tau"] > 0.12
    for when, strength, height in zip(v["times"], v["strengths"], v["heights"],
                                      strict=True):
        cx, cy = 8 + when * 90, height * 96
        radius = 5 + 13 * strength
        colour = (255, 210, 90) if gold else _mix((255, 80, 160), p.palette, 0.5)
        for k in range(12):
            ang = 2 * np.pi * k / 12
            d.line([cx + 0.25 * radius * np.cos(ang), cy + 0.25 * radius * np.sin(ang),
                    cx + radius * np.cos(ang), cy + radius * np.sin(ang)], fill=colour, width=1)
        d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=(255, 255, 230))


def _scene_water(p: ClipParams, d: ImageDraw.ImageDraw) -> None:
    v = p.values
    d.rectangle([0, 0, 95, 95], fill=(190, 220, 235))
    d.rectangle([0, 22, 95, 34], fill=_mix((60, 120, 60), p.palette, 0.2))
    bright = (v["cutoff"] - 1000) / 6200                       # brighter noise, lighter water
    water = _mix((20, 50, 120), (80, 200, 210), float(np.clip(bright, 0, 1)))
    d.rectangle([0, 34, 95, 95], fill=water)
    light = _mix(water, (255, 255, 255), 0.35)
    for row in range(40, 96, 9):
        xs = np.arange(0, 97, 4)
        ys = row + 2 * np.sin(xs / 7 + p.layout * 6 + row)
        d.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=light, width=1)
    rng = np.random.default_rng(int(p.layout * 1e6) + 1)
    for _ in range(int(v["bubbles"] * 1.5)):
        x, y = rng.uniform(0, 96), rng.uniform(38, 96)
        d.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(245, 250, 255))


_SCENES = (_scene_baby, _scene_dog, _scene_rail, _scene_fireworks, _scene_water)


def render_scene(params: ClipParams) -> np.ndarray:
    """The clip's 96x96 RGB scene, uint8 [96, 96, 3]; brightness follows loudness."""
    canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE))
    _SCENES[params.class_index](params, ImageDraw.Draw(canvas))
    image = np.asarray(canvas, dtype=np.float32) * (0.55 + 0.45 * params.loud)
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- public API

def demo_clip(class_index: int, seed: int, window: int = 0,
              sample_rate: int = DEMO_SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """One demo clip: ``(audio float32 [sample_rate], image uint8 [96, 96, 3])``.

    ``seed`` picks the pseudo-video, ``window`` the 1-s window within it.
    """
    params = clip_params(class_index, seed, window)
    audio = render_audio(params, sample_rate, noise_seed=int(seed) * 1000 + int(window))
    return audio, render_scene(params)


def demo_audio(seconds: float, seed: int = 0, sample_rate: int = DEMO_SAMPLE_RATE,
               classes: list[int] | None = None) -> tuple[np.ndarray, list[int]]:
    """Concatenated 1-s demo clips cycling through the classes (for streaming tests).

    Returns ``(audio float32 [round(seconds*sample_rate)], class index of each second)``.
    """
    order = list(range(len(DEMO_CLASSES))) if classes is None else list(classes)
    n_seconds = int(np.ceil(seconds))
    clips, labels = [], []
    for i in range(n_seconds):
        k = order[i % len(order)]
        clips.append(demo_clip(k, seed + i, 0, sample_rate)[0])
        labels.append(k)
    audio = np.concatenate(clips)[: int(round(seconds * sample_rate))] if clips else \
        np.zeros(0, np.float32)
    return audio.astype(np.float32), labels


def write_demo_wav(path: str | Path, seconds: float, seed: int = 0,
                   sample_rate: int = DEMO_SAMPLE_RATE) -> list[int]:
    """Write ``seconds`` of demo sound (classes in turn, 1 s each) as a 16-bit WAV."""
    import io

    import soundfile

    from runtime.artifacts import atomic_write_bytes

    audio, labels = demo_audio(seconds, seed, sample_rate)
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, sample_rate, subtype="PCM_16", format="WAV")
    atomic_write_bytes(path, buffer.getvalue())
    return labels


def demo_grid(per_class: int = 8, seed: int = 0) -> np.ndarray:
    """A picture of the set: one row per class, ``per_class`` scenes from distinct videos."""
    rows = []
    for k in range(len(DEMO_CLASSES)):
        rows.append(np.concatenate([render_scene(clip_params(k, seed * 1000 + i))
                                    for i in range(per_class)], axis=1))
    return np.concatenate(rows, axis=0)


def demo_plan(sizes: DemoSizes) -> dict[str, list[tuple[int, int, int, int]]]:
    """``split -> [(class, video_id, video_seed, window)]``; videos never cross splits."""
    plan: dict[str, list[tuple[int, int, int, int]]] = {"train": [], "val": [], "test": []}
    video_id = 0
    per_video = max(1, sizes.windows_per_video)
    for split, count in (("train", sizes.train), ("val", sizes.val), ("test", sizes.test)):
        for k in range(len(DEMO_CLASSES)):
            done = 0
            while done < count:
                n = min(per_video, count - done)
                for w in range(n):
                    plan[split].append((k, video_id, video_id, w))
                done += n
                video_id += 1
    return plan


def build_demo_store(out_dir: str | Path, n_per_class_train: int = DEMO_SIZES.train,
                     n_val: int = DEMO_SIZES.val, n_test: int = DEMO_SIZES.test, seed: int = 0,
                     windows_per_video: int = DEMO_SIZES.windows_per_video,
                     front_end: FrontEndConfig | None = None, progress: bool = True,
                     replace: bool = True) -> Path:
    """Synthesize the demo set into a store at ``out_dir`` and return its path.

    ``n_per_class_train``, ``n_val`` and ``n_test`` are clips PER CLASS; the set is
    balanced. Pseudo-video ``v`` uses seed ``(seed, v)``, so any split is reproducible.
    """
    from trainer.data.store import StoreWriter  # local: store imports nothing from here

    cfg = front_end or FrontEndConfig()
    sizes = DemoSizes(n_per_class_train, n_val, n_test, windows_per_video)
    plan = demo_plan(sizes)
    source = {"kind": "demo", "seed": int(seed), "windows_per_video": int(windows_per_video),
              "per_class": {"train": n_per_class_train, "val": n_val, "test": n_test},
              "generator": "trainer.demo_data v1"}
    total = sum(len(items) for items in plan.values())
    bar = tqdm(total=total, desc="demo set", unit="clip", disable=not progress)
    with StoreWriter(out_dir, DEMO_CLASSES, cfg, has_images=True, source=source,
                     replace=replace) as writer:
        for split, items in plan.items():
            if not items:
                continue
            out = writer.open_split(split, len(items))
            for start in range(0, len(items), 64):
                chunk = items[start:start + 64]
                audio, images, ids = [], [], []
                for k, video, _, window in chunk:
                    video_seed = int(np.random.SeedSequence((int(seed), video))
                                     .generate_state(1)[0])
                    a, img = demo_clip(k, video_seed, window, cfg.sample_rate)
                    audio.append(a)
                    images.append(img)
                    ids.append(segment_id(k, video, window))
                specs = to_uint8(log_mel_batch(np.stack(audio), cfg))
                out.append_batch(specs, [c[0] for c in chunk], [c[1] for c in chunk], ids,
                                 np.stack(images))
                bar.update(len(chunk))
    bar.close()
    return Path(out_dir)
