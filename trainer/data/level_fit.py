"""The front end's LEVEL, fitted on one set of real recordings and reported on another
(``python -m trainer.data.level_fit``; docs/DATA.md, "Clip-relative level").

The official s2i_data images point to a level set per video (white in nearly every video,
in a third of the windows; docs/DATA.md). This compares three ways of setting it, all with
the ``s2i-official`` layout (44.1 kHz, 1024-sample frames, Slaney mel to 22.05 kHz):

- ``fixed``: the ``s2i-official`` preset's fixed [-17.5, 22.5] dB (fitted earlier on the
  fit set below, so its fit-set figures are in-sample);
- ``clip``: dB relative to each recording's maximum with a range of R dB, min -> 0 and
  max -> 255 over the recording (``runtime.frontend.log_mel_clip``); R is fitted here;
- ``running``: the live form, relative to a running maximum that falls by d dB per second
  (``runtime.frontend.RunningLevel``); d is fitted here to come closest to ``clip`` on a
  stream: the set's recordings played one after another, compared with the same stream cut
  into 10-s clips each scaled to its own maximum (``stream_distance``).

Fit set: the 57 recordings of the Debian package openttd-opensfx (freesound.org and
pdsounds.org recordings). Held-out set: every recording of two other packages,
lincity-ng-data (city sounds) and freeciv-data (stdsounds), which the fit never sees: a split
by source package, not by window. Most held-out files are 11.025 kHz (nothing above 5.5 kHz),
so every level statistic here is taken over the lowest ``BANDS`` mel bands (up to ~4.8 kHz)
for the official images and the recordings alike. Images go through a quality-75 JPEG round
trip before they are measured, as the official ones did. Intervals: 95% bootstrap over
recordings (``--boot`` resamples).
"""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import config_json, parse_config
from runtime.errors import S2IError
from runtime.frontend import (
    FrontEndConfig,
    RunningLevel,
    log_mel_batch,
    log_mel_clip,
    log_mel_db,
    to_uint8,
)
from trainer.data.frontend_fit import (
    OfficialSet,
    read_official,
    read_openttd_catalogue,
    read_recordings,
    resampled,
)

BANDS = 80                 # mel bands 0..79 of 128 (band 79 centred near 4.8 kHz at 44.1 kHz)
WHITE = 250                # a pixel at or above this grey level is "white"
HELD_OUT = (Path("/usr/share/games/lincity-ng/sounds"),
            Path("/usr/share/games/freeciv/stdsounds"))
MIN_RATE = 11025           # lower rates leave bands below BANDS empty
RANGES_DB = tuple(np.arange(25.0, 60.1, 2.5))
DECAYS_DB_PER_S = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


# ----------------------------------------------------------------------------- pixels

def jpeg_q75(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``[N, 128, 100]`` -> the same after a quality-75 JPEG round trip (PIL)."""
    from PIL import Image
    out = np.empty_like(pixels)
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="JPEG", quality=75)
        out[i] = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("L"))
    return out


def low_bands(features: np.ndarray) -> np.ndarray:
    """[-1, 1] features (row 0 highest) -> uint8 pixels of the lowest ``BANDS`` bands,
    band 0 first, after the JPEG round trip of the whole image."""
    return jpeg_q75(to_uint8(features))[:, ::-1, :][:, :BANDS]


def level_pixels(db: np.ndarray, cfg: FrontEndConfig, mode: str) -> np.ndarray:
    """One recording's dB windows -> [-1, 1] features under ``mode`` (``cfg`` holds the
    range and decay). Uses the shipped functions' maths on precomputed dB."""
    from runtime.frontend import scale_relative
    n = len(db)
    if mode == "clip":
        top = float(db.max())
        kept = db[db >= top + cfg.db_min]
        return scale_relative(db, cfg, np.full(n, top), np.full(n, float(kept.min())))
    level = RunningLevel(cfg)
    return scale_relative(db, cfg, np.array([level.update(float(d.max()), 1.0) for d in db]))


# ----------------------------------------------------------------------------- statistics

@dataclass
class PerRecording:
    """Sums per recording, so that bootstrap resamples are cheap weighted sums."""

    histogram: np.ndarray      # [R, 256] pixel counts
    windows: np.ndarray        # [R] windows
    white_windows: np.ndarray  # [R] windows with a pixel >= WHITE
    reaches_white: np.ndarray  # [R] 1 when any window of the recording does
    white_pixels: list[np.ndarray]  # per recording: white pixels of each window reaching white


def per_recording(images: list[np.ndarray]) -> PerRecording:
    hist = np.stack([np.bincount(p.ravel(), minlength=256)[:256] for p in images])
    peaks = [p.reshape(len(p), -1).max(axis=1) for p in images]
    return PerRecording(hist, np.array([len(p) for p in peaks]),
                        np.array([(p >= WHITE).sum() for p in peaks]),
                        np.array([float(p.max() >= WHITE) for p in peaks]),
                        [(p >= WHITE).reshape(len(p), -1).sum(axis=1)[pk >= WHITE]
                         for p, pk in zip(images, peaks, strict=True)])


def summary(stats: PerRecording, official_hist: np.ndarray, pick: np.ndarray | None = None
            ) -> dict[str, float]:
    """Mean pixel, white rates and histogram distance (EMD, grey levels) to the official
    images, over the recordings ``pick`` (indices, repeats allowed; None = all)."""
    pick = np.arange(len(stats.windows)) if pick is None else pick
    hist = stats.histogram[pick].sum(axis=0).astype(np.float64)
    hist /= hist.sum()
    white = np.concatenate([stats.white_pixels[i] for i in pick])
    return {"mean_pixel": float((hist * np.arange(256)).sum()),
            "white_pixels_median": float(np.median(white)) if len(white) else 0.0,
            "windows_white": float(stats.white_windows[pick].sum() / stats.windows[pick].sum()),
            "recordings_white": float(stats.reaches_white[pick].mean()),
            "histogram_emd": float(np.abs(np.cumsum(hist) - np.cumsum(official_hist)).sum())}


def with_intervals(stats: PerRecording, official_hist: np.ndarray, boot: int,
                   seed: int = 0) -> dict[str, Any]:
    """``summary`` plus a 95% bootstrap interval over recordings for each figure."""
    point = summary(stats, official_hist)
    rng = np.random.default_rng(seed)
    n = len(stats.windows)
    draws = [summary(stats, official_hist, rng.integers(0, n, n)) for _ in range(boot)]
    return {k: {"value": v, "ci95": [float(np.percentile([d[k] for d in draws], 2.5)),
                                     float(np.percentile([d[k] for d in draws], 97.5))]}
            for k, v in point.items()}


def official_statistics(pixels: np.ndarray, ids: list[str]) -> dict[str, Any]:
    """The official images' level figures over the same bands (band 0 lowest in ``pixels``)."""
    low = pixels[:, :BANDS]
    hist = np.bincount(low.ravel(), minlength=256)[:256] / low.size
    peaks = low.reshape(len(low), -1).max(axis=1)
    white = (low >= WHITE).reshape(len(low), -1).sum(axis=1)[peaks >= WHITE]
    videos: dict[str, int] = {}
    per_video: dict[str, list[int]] = {}
    for vid, peak in zip(ids, peaks, strict=True):
        videos[vid] = max(videos.get(vid, 0), int(peak))
        per_video.setdefault(vid, []).append(int(peak))
    return {"histogram": hist, "mean_pixel": float((hist * np.arange(256)).sum()),
            "windows_white": float((peaks >= WHITE).mean()),
            "white_pixels_median": float(np.median(white)),
            "recordings_white": float(np.mean([p >= WHITE for p in videos.values()])),
            "windows": int(len(low)), "videos": len(videos),
            "white_by_length": white_by_length([np.array(p) for p in per_video.values()])}


LENGTHS = ((1, 1), (2, 2), (3, 4), (5, 9), (10, 10**9))   # windows per clip, for white rates


def white_by_length(peaks: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Share of windows reaching white, by the length (windows) of their clip: a level set
    per clip puts white in about one window per clip, so the share falls with length."""
    out = {}
    for low, high in LENGTHS:
        chosen = [p for p in peaks if low <= len(p) <= high]
        if chosen:
            label = str(low) if low == high else f"{low}+" if high > 10**6 else f"{low}-{high}"
            every = np.concatenate(chosen)
            out[label] = {"clips": len(chosen), "windows_white": float((every >= WHITE).mean())}
    return out


# ----------------------------------------------------------------------------- the study

def recordings_db(sounds: list[tuple[str, np.ndarray, int]], cfg: FrontEndConfig
                  ) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Names, dB windows and fixed-preset pixels of every recording with a whole window."""
    names, dbs, fixed = [], [], []
    fixed_cfg = FrontEndConfig.preset("s2i-official")
    for (name, _, _), audio in zip(sounds, resampled(sounds, cfg.sample_rate), strict=True):
        n = len(audio) // cfg.n_samples
        if n == 0 or not np.any(audio):
            continue
        windows = np.clip(audio[: n * cfg.n_samples], -1, 1).reshape(n, cfg.n_samples)
        names.append(name)
        dbs.append(log_mel_db(windows, cfg))
        fixed.append(low_bands(log_mel_batch(windows, fixed_cfg)))
    if not names:
        raise S2IError("no recording holds a whole 1-s window")
    return names, dbs, fixed


def fit_range(dbs: list[np.ndarray], cfg: FrontEndConfig, official: dict[str, Any]) -> float:
    """The clip range (dB) whose fit-set histogram is nearest the official one."""
    def emd(width: float) -> float:
        c = replace(cfg, db_min=-float(width))
        stats = per_recording([low_bands(level_pixels(d, c, "clip")) for d in dbs])
        return summary(stats, official["histogram"])["histogram_emd"]
    return float(min(RANGES_DB, key=emd))


CLIP_WINDOWS = 10          # VEGAS clips are at most 10 s: the clip a live reference stands for


def stream_distance(dbs: list[np.ndarray], cfg: FrontEndConfig, seed: int = 0) -> np.ndarray:
    """The live case: a set's recordings one after another (seeded order) as ONE stream.
    Target: each run of ``CLIP_WINDOWS`` windows scaled to its own maximum (a clip); live:
    the running reference over the whole stream. Per clip: mean |live - clip| grey level."""
    order = np.random.default_rng(seed).permutation(len(dbs))
    stream = np.concatenate([dbs[i] for i in order])
    live = low_bands(level_pixels(stream, cfg, "running")).astype(np.float64)
    size = min(CLIP_WINDOWS, len(stream))      # a stream shorter than a clip: one clip
    distances = []
    for start in range(0, len(stream) - size + 1, size):
        clip = low_bands(level_pixels(stream[start:start + size], cfg, "clip"))
        distances.append(np.abs(live[start:start + size] - clip).mean())
    return np.array(distances)


def interval(values: np.ndarray, boot: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    means = [values[rng.integers(0, len(values), len(values))].mean() for _ in range(boot)]
    return {"value": float(values.mean()),
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]}


def study(official_pixels: np.ndarray, ids: list[str], fit_sounds: list, held_sounds: list,
          boot: int = 1000) -> dict[str, Any]:
    official = official_statistics(official_pixels, ids)
    base = FrontEndConfig.preset("s2i-official-clip")
    sets = {"fit": recordings_db(fit_sounds, base), "held_out": recordings_db(held_sounds, base)}
    width = fit_range(sets["fit"][1], base, official)
    clip_cfg = replace(base, db_min=-width)
    decays = {d: float(stream_distance(sets["fit"][1],
                                       replace(clip_cfg, decay_db_per_s=d)).mean())
              for d in DECAYS_DB_PER_S}
    decay = float(min(decays, key=lambda d: decays[d]))
    cfg = replace(clip_cfg, decay_db_per_s=decay)
    report: dict[str, Any] = {
        "official": {k: v for k, v in official.items() if k != "histogram"},
        "bands": BANDS, "white": WHITE, "fitted": {"range_db": width, "decay_db_per_s": decay,
                                                    "fit_distance_by_decay": decays},
        "config": cfg.to_dict(), "sets": {}}
    for name, (names, dbs, fixed) in sets.items():
        clip = [low_bands(level_pixels(d, cfg, "clip")) for d in dbs]
        running = [low_bands(level_pixels(d, cfg, "running")) for d in dbs]
        report["sets"][name] = {
            "recordings": len(names), "windows": int(sum(len(d) for d in dbs)),
            "fixed": with_intervals(per_recording(fixed), official["histogram"], boot),
            "clip": with_intervals(per_recording(clip), official["histogram"], boot),
            "running": with_intervals(per_recording(running), official["histogram"], boot),
            "clip_white_by_length": white_by_length(
                [c.reshape(len(c), -1).max(axis=1) for c in clip]),
            "running_vs_clip_grey": interval(np.array(
                [np.abs(r.astype(np.float64) - c).mean() for r, c in zip(running, clip,
                                                                           strict=True)]),
                boot),
            "stream_vs_clips_grey": {
                str(d): interval(stream_distance(dbs, replace(clip_cfg, decay_db_per_s=d)),
                                 boot) for d in DECAYS_DB_PER_S}}
    return report


def check_shipped(sounds: list, cfg: FrontEndConfig) -> float:
    """Largest |log_mel_clip - level_pixels(clip)| over the recordings: the study's maths is
    the shipped front end's."""
    worst = 0.0
    for audio in resampled(sounds, cfg.sample_rate)[:5]:
        if len(audio) < cfg.n_samples or not np.any(audio):
            continue
        n = len(audio) // cfg.n_samples
        windows = np.clip(audio[: n * cfg.n_samples], -1, 1)
        shipped = log_mel_clip(windows, cfg)
        ours = level_pixels(log_mel_db(windows.reshape(n, -1), cfg), cfg, "clip")
        worst = max(worst, float(np.abs(shipped - ours).max()))
    return worst


def by_length(rates: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{k} windows {v['windows_white']:.0%} ({v['clips']})"
                     for k, v in rates.items())


def print_report(report: dict[str, Any]) -> None:
    o = report["official"]
    print(f"official val, lowest {report['bands']} bands: mean pixel {o['mean_pixel']:.1f}, "
          f"windows reaching {report['white']}: {o['windows_white']:.1%}, videos: "
          f"{o['recordings_white']:.1%} ({o['windows']} windows, {o['videos']} videos); "
          f"median white pixels in a window reaching white: {o['white_pixels_median']:g}")
    print("  windows reaching white by video length: " + by_length(o["white_by_length"]))
    f = report["fitted"]
    print(f"fitted on the fit set: range {f['range_db']:.1f} dB, running decay "
          f"{f['decay_db_per_s']:g} dB/s")

    def fmt(entry: dict[str, Any], scale: float = 1.0, spec: str = ".1f") -> str:
        lo, hi = (x * scale for x in entry["ci95"])
        return f"{entry['value'] * scale:{spec}} [{lo:{spec}}, {hi:{spec}}]"

    for name, s in report["sets"].items():
        print(f"\n{name}: {s['recordings']} recordings, {s['windows']} windows")
        print(f"  {'level':<8} {'mean pixel':>20} {'windows white %':>22} "
              f"{'recordings white %':>22} {'histogram EMD':>20} {'white px':>18}")
        for mode in ("fixed", "clip", "running"):
            m = s[mode]
            print(f"  {mode:<8} {fmt(m['mean_pixel']):>20} {fmt(m['windows_white'], 100):>22} "
                  f"{fmt(m['recordings_white'], 100):>22} {fmt(m['histogram_emd'], 1, '.2f'):>20}"
                  f" {fmt(m['white_pixels_median'], 1, '.0f'):>18}")
        print("  clip level, windows reaching white by recording length: "
              + by_length(s["clip_white_by_length"]))
        print(f"  running vs clip, each recording a stream: mean |pixel difference| "
              f"{fmt(s['running_vs_clip_grey'], 1, '.2f')} grey levels")
        print(f"  one stream of all recordings vs its {CLIP_WINDOWS}-s clips, mean |pixel "
              "difference| by decay (dB/s):")
        for decay, entry in s["stream_vs_clips_grey"].items():
            mark = " (fitted)" if float(decay) == f["decay_db_per_s"] else ""
            print(f"    {float(decay):>5g}: {fmt(entry, 1, '.2f')}{mark}")


@dataclass
class LevelFitConfig:
    source: OfficialSet = field(metadata={
        "title": "the authors' spectrograms; the fit set (the catalogue)"})
    held_out: tuple[Path, ...] = field(default=HELD_OUT, metadata={
        "help": "held-out recordings: folders (default: lincity-ng-data and freeciv-data "
                "sounds)"})
    boot: int = field(default=1000, metadata={"help": "bootstrap resamples"})
    json: Path | None = field(default=None, metadata={"help": "write every figure here"})

    def __post_init__(self) -> None:
        if self.boot < 10:
            raise ValueError(f"--boot must be at least 10, got {self.boot}")


def main(argv: list[str] | None = None) -> int:
    args = parse_config(LevelFitConfig, sys.argv[1:] if argv is None else argv,
                        "python -m trainer.data.level_fit", __doc__)
    official_pixels, ids = read_official(args.source.official, args.source.limit)
    fit = read_openttd_catalogue(args.source.catalogue)
    held = [s for folder in args.held_out for s in read_recordings(folder)
            if s[2] >= MIN_RATE]
    report = study(official_pixels, ids, fit, held, args.boot)
    report["shipped_max_abs_difference"] = check_shipped(
        fit, FrontEndConfig(**report["config"]))
    report["held_out_sources"] = [str(f) for f in args.held_out]
    report["config"] = config_json(args)
    print_report(report)
    if args.json:
        from runtime.artifacts import atomic_write_json
        atomic_write_json(args.json, report)
    return 0


if __name__ == "__main__":
    from runtime.errors import run_cli
    raise SystemExit(run_cli(lambda: main()))
