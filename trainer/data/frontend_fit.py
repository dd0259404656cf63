"""Estimate the authors' front end from their published spectrograms
(``python -m trainer.data.frontend_fit``; docs/DATA.md, "The authors' front end").

The s2i_data spectrograms come without the code that made them. Their statistics still tell
much: which mel bands are at the floor how often (per-band occupancy), the pixel histogram,
and the correlation of neighbouring bands (bands that share FFT bins move together, a
fingerprint of sample rate, FFT size and fmax). Real recordings run through a candidate front
end should give the same statistics. This module computes them for the official images and
for real recordings under each candidate (sample rate, FFT size, fmax; then the dB range,
fixed or relative to each clip's maximum) and reports the distances.

Real recordings: the Debian package openttd-opensfx holds freesound.org recordings (trains,
vehicles, animals, crashes; CC0/CC-BY/CC-BY-SA, 44.1 kHz) in one catalogue file, read here
without unpacking (``read_openttd_catalogue``).
"""

from __future__ import annotations

import io
import struct
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from runtime.config import config_json, parse_config
from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig, hz_to_mel, log_mel_batch, mel_to_hz, to_uint8

OPENSFX = Path("/usr/share/games/openttd/baseset/opensfx/opensfx.cat")
FLOOR = 4            # a pixel at or below this grey level counts as "at the floor"
N_MELS, N_FRAMES = 128, 100
# Candidate band layouts: (sample rate, n_fft, frame length in samples, fmax). The frame is
# the paper's 25 ms (n_fft = the frame or the next power of two) or a power of two itself;
# fmax = Nyquist, or a lower cut.
LAYOUTS: tuple[tuple[int, int, int, float], ...] = (
    (16000, 400, 400, 8000.0), (16000, 512, 400, 8000.0), (16000, 256, 256, 8000.0),
    (22050, 551, 551, 11025.0), (22050, 1024, 551, 11025.0), (22050, 512, 512, 11025.0),
    (32000, 800, 800, 16000.0), (32000, 1024, 800, 16000.0),
    (44100, 1102, 1102, 22050.0), (44100, 2048, 1102, 22050.0), (44100, 1024, 1024, 22050.0),
    (44100, 1102, 1102, 16000.0), (44100, 2048, 1102, 16000.0),
    (48000, 1200, 1200, 24000.0), (48000, 1024, 1024, 24000.0),
)


# ----------------------------------------------------------------------------- inputs

def read_openttd_catalogue(path: Path = OPENSFX, recordings_only: bool = True
                           ) -> list[tuple[str, np.ndarray, int]]:
    """``(description, mono float32 audio, sample rate)`` of each WAV in an OpenTTD sound
    catalogue (``.cat``: a table of (offset, size) pairs, then entries of a length-prefixed
    description and a RIFF file). ``recordings_only`` keeps the sounds made from a recording
    ("Original ..." in the credits) and drops the synthesised ones."""
    import soundfile as sf
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise S2IError(f"cannot read the sound catalogue {path} ({exc.strerror}); install the "
                       "Debian package openttd-opensfx or pass --recordings") from exc
    if len(data) < 8:
        raise S2IError(f"{path} is not an OpenTTD sound catalogue (too short)")
    count = (struct.unpack("<I", data[:4])[0] & 0x7FFFFFFF) // 8
    sounds = []
    for i in range(count):
        offset, size = (v & 0x7FFFFFFF for v in struct.unpack("<II", data[8 * i: 8 * i + 8]))
        if offset + size > len(data) or size < 2:
            raise S2IError(f"{path}: entry {i} points outside the file")
        name_len = data[offset]
        name = data[offset + 1: offset + 1 + name_len].rstrip(b"\0").decode("latin-1")
        body = data[offset + 1 + name_len: offset + size]
        if body[:4] != b"RIFF" or (recordings_only and "Original" not in name):
            continue
        audio, rate = sf.read(io.BytesIO(body), dtype="float32", always_2d=True)
        sounds.append((name, audio.mean(axis=1), int(rate)))
    return sounds


def read_recordings(folder: Path) -> list[tuple[str, np.ndarray, int]]:
    """Every sound file soundfile reads in a folder (mono mix, native rate)."""
    import soundfile as sf
    sounds = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            try:
                audio, rate = sf.read(path, dtype="float32", always_2d=True)
            except (RuntimeError, sf.LibsndfileError):
                continue
            sounds.append((path.name, audio.mean(axis=1), int(rate)))
    if not sounds:
        raise S2IError(f"no readable sound files in {folder}")
    return sounds


def read_official(source: Path, limit: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Official JPG spectrograms (folder or archive) -> uint8 ``[N, 128, 100]`` with band 0
    the LOWEST (rows flipped from the image convention), and their ``cCCC_sVVVVV`` ids."""
    from trainer.data.prepare_s2i import _iter_jpg_bytes, decode_spectrogram_jpg
    images, ids = [], []
    for name, data in _iter_jpg_bytes(source):
        picture = decode_spectrogram_jpg(data)
        if isinstance(picture, str):
            continue
        images.append(picture[::-1])
        ids.append(Path(name).name[:11])
        if limit is not None and len(images) >= limit:
            break
    if not images:
        raise S2IError(f"no official spectrograms read from {source}")
    return np.stack(images), ids


# ----------------------------------------------------------------------------- statistics

@dataclass
class Stats:
    occupancy: np.ndarray     # [128] fraction of pixels at the floor, band 0 = lowest
    histogram: np.ndarray     # [256] fraction of pixels at each grey level
    neighbours: np.ndarray    # [127] correlation of band b with band b+1 (detrended)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: [round(float(x), 5) for x in getattr(self, k)]
                for k in ("occupancy", "histogram", "neighbours")}


def statistics(pixels: np.ndarray, layout: bool = True) -> Stats:
    """Statistics of uint8-valued spectrograms ``[N, 128, 100]`` (band 0 lowest);
    ``layout=False`` skips the (slower) neighbour correlations."""
    pixels = np.asarray(pixels)
    occupancy = (pixels <= FLOOR).mean(axis=(0, 2))
    histogram = np.bincount(pixels.astype(np.int64).ravel(), minlength=256)[:256] / pixels.size
    if not layout:
        return Stats(occupancy, histogram, np.zeros(N_MELS - 1))
    bands = pixels.transpose(1, 0, 2).reshape(N_MELS, -1).astype(np.float64)
    bands = bands - bands.mean(axis=1, keepdims=True)
    norms = np.sqrt((bands ** 2).sum(axis=1)) + 1e-12
    corr = (bands[:-1] * bands[1:]).sum(axis=1) / (norms[:-1] * norms[1:])
    trend = np.convolve(np.pad(corr, 3, mode="edge"), np.ones(7) / 7, mode="valid")
    return Stats(occupancy, histogram, corr - trend)


def distances(a: Stats, b: Stats, layout_bands: int = 100) -> dict[str, float]:
    """Per-band occupancy (mean absolute difference, in fraction of pixels), pixel histogram
    (earth mover's distance, in grey levels) and the band-layout fingerprint: the Pearson
    correlation of the neighbour correlations of the lowest ``layout_bands`` bands (1 = the
    same bands share the same FFT bins; phase and period both count)."""
    x, y = a.neighbours[:layout_bands], b.neighbours[:layout_bands]
    same = bool(np.allclose(x, y))
    return {"occupancy_l1": float(np.abs(a.occupancy - b.occupancy).mean()),
            "histogram_emd": float(np.abs(np.cumsum(a.histogram)
                                          - np.cumsum(b.histogram)).sum()),
            "layout_r": 1.0 if same else float(np.corrcoef(x, y)[0, 1])
            if x.std() > 0 and y.std() > 0 else 0.0}


def clip_reference_evidence(official: np.ndarray, ids: list[str]) -> dict[str, float]:
    """How often a window vs a whole video reaches (near) white: a fixed dB range makes both
    rare for quiet videos; a range relative to each clip's maximum puts white in every video."""
    peaks = official.reshape(len(official), -1).max(axis=1)
    per_video: dict[str, int] = defaultdict(int)
    for vid, peak in zip(ids, peaks, strict=True):
        per_video[vid] = max(per_video[vid], int(peak))
    videos = np.array(list(per_video.values()))
    return {"windows": len(peaks), "videos": len(videos),
            "windows_reaching_250": float((peaks >= 250).mean()),
            "videos_reaching_250": float((videos >= 250).mean()),
            "mean_pixel": float(official.mean())}


# ----------------------------------------------------------------------------- candidates

def mel_db(audio: np.ndarray, rate: int, n_fft: int, fmax: float, win: int | None = None
           ) -> np.ndarray | None:
    """Whole 1-s windows of one clip -> dB ``[W, 128, 100]`` (band 0 lowest): Hamming frames
    of ``win`` samples (default 25 ms), 10-ms hop, Slaney mel. Also for layouts FrontEndConfig
    cannot hold (22.05 kHz has no whole-sample 10-ms hop)."""
    windows = len(audio) // rate
    if windows == 0:
        return None
    win = win or int(round(rate * 0.025))
    hop = int(rate * 0.01)
    padded = np.pad(audio[: windows * rate], ((win - hop) // 2, win))
    starts = np.arange(windows * N_FRAMES) * hop
    frames = padded[starts[:, None] + np.arange(win)[None]] * np.hamming(win).astype(np.float32)
    power = np.abs(np.fft.rfft(frames, n_fft, axis=1)) ** 2
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(fmax), N_MELS + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    weights = np.maximum(0, np.minimum((freqs - lower) / (centre - lower),
                                       (upper - freqs) / (upper - centre)))
    weights *= 2.0 / (upper - lower)
    db = 10 * np.log10(np.maximum(power @ weights.T, 1e-10))
    return db.reshape(windows, N_FRAMES, N_MELS).transpose(0, 2, 1)


def to_pixels(db: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.round(np.clip((db - low) / (high - low), 0.0, 1.0) * 255.0)


def resampled(sounds: list[tuple[str, np.ndarray, int]], rate: int) -> list[np.ndarray]:
    import soxr
    return [a if r == rate else soxr.resample(a, r, rate).astype(np.float32)
            for _, a, r in sounds]


def fit_layout(official: Stats, clips: list[np.ndarray]) -> dict[str, Any]:
    """Best fixed dB range and best clip-relative range for one layout's clips (dB): the
    range minimises occupancy + histogram distance; the layout fingerprint is then taken at
    that range."""
    everything = np.concatenate(clips)

    def level_score(pixels: np.ndarray) -> float:
        d = distances(statistics(pixels, layout=False), official)
        return d["occupancy_l1"] + d["histogram_emd"] / 100

    grid = [(top, width) for top in np.arange(-10.0, 60.1, 2.5)
            for width in np.arange(20.0, 100.1, 5.0)]
    top, width = min(grid, key=lambda g: level_score(to_pixels(everything, g[0] - g[1], g[0])))
    fixed = {"db_min": float(top - width), "db_max": float(top),
             "distance": distances(statistics(to_pixels(everything, top - width, top)),
                                   official)}

    def relative(width: float) -> np.ndarray:
        return np.concatenate([to_pixels(c, c.max() - width, c.max()) for c in clips])

    width = min(np.arange(20.0, 100.1, 5.0), key=lambda w: level_score(relative(w)))
    clip_max = {"range_db": float(width), "distance": distances(statistics(relative(width)),
                                                                official)}
    return {"fixed": fixed, "clip_max": clip_max}


def front_end_pixels(sounds: list[tuple[str, np.ndarray, int]], cfg: FrontEndConfig
                     ) -> np.ndarray:
    """The shipped front end itself (runtime.frontend) on whole 1-s windows -> uint8
    ``[N, 128, 100]``, band 0 lowest."""
    windows = []
    for audio in resampled(sounds, cfg.sample_rate):
        n = len(audio) // cfg.n_samples
        if n:
            windows.append(audio[: n * cfg.n_samples].reshape(n, cfg.n_samples))
    return to_uint8(log_mel_batch(np.concatenate(windows), cfg))[:, ::-1, :]


# ----------------------------------------------------------------------------- report

def plot(official: Stats, rows: dict[str, Stats], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    series = {"official s2i_data (val)": official, **rows}
    styles = ["k-", "C0-", "C1--", "C2:"]
    for (label, s), style in zip(series.items(), styles, strict=False):
        axes[0].plot(s.occupancy * 100, style, label=label)
        axes[1].semilogy(np.arange(256), np.maximum(s.histogram, 1e-6), style, label=label)
        axes[2].plot(s.neighbours[:40], style, label=label)
    axes[0].set(title="pixels at the floor (<= 4) per mel band", xlabel="mel band (0 = lowest)",
                ylabel="% of pixels")
    axes[1].set(title="pixel histogram", xlabel="grey level", ylabel="fraction of pixels")
    axes[2].set(title="band layout fingerprint", xlabel="mel band b (lowest 40)",
                ylabel="corr(b, b+1) minus its 7-band mean")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


@dataclass
class OfficialSet:
    """The authors' published spectrograms (both fits read them)."""
    official: Path = field(metadata={
        "help": "official JPG spectrograms: a folder or .tar.gz (e.g. val.tar.gz)"})
    limit: int | None = field(default=None, metadata={"help": "official images to read at most"})
    catalogue: Path = field(default=OPENSFX, metadata={
        "help": "OpenTTD sound catalogue with real recordings (openttd-opensfx)"})


@dataclass
class FrontEndFitConfig:
    source: OfficialSet = field(metadata={"title": "the authors' spectrograms, real recordings"})
    recordings: Path | None = field(default=None, metadata={
        "help": "a folder of real recordings instead of the catalogue"})
    search: bool = field(default=True, metadata={
        "help": "search the candidate layouts (--no-search: measure only the shipped ones)"})
    json: Path | None = field(default=None, metadata={"help": "write every figure here"})
    plot: Path | None = field(default=None, metadata={"help": "write the evidence plot here"})


def main(argv: list[str] | None = None) -> int:
    args = parse_config(FrontEndFitConfig, sys.argv[1:] if argv is None else argv,
                        "python -m trainer.data.frontend_fit", __doc__)
    official_pixels, ids = read_official(args.source.official, args.source.limit)
    official = statistics(official_pixels)
    sounds = (read_recordings(args.recordings) if args.recordings
              else read_openttd_catalogue(args.source.catalogue))
    print(f"{len(official_pixels)} official spectrograms; {len(sounds)} real recordings")
    evidence = clip_reference_evidence(official_pixels, ids)
    print("reference: windows reaching grey 250: {windows_reaching_250:.1%}; videos: "
          "{videos_reaching_250:.1%} ({videos} videos); mean pixel {mean_pixel:.1f}"
          .format(**evidence))
    layouts = []
    for rate, n_fft, win, fmax in () if not args.search else LAYOUTS:
        clips = [d for a in resampled(sounds, rate)
                 if (d := mel_db(a, rate, n_fft, fmax, win)) is not None]
        fit = fit_layout(official, clips)
        layouts.append({"sample_rate": rate, "n_fft": n_fft, "frame": win, "fmax": fmax,
                        **fit})
        f, c = fit["fixed"], fit["clip_max"]
        print(f"{rate:>6} Hz n_fft {n_fft:>5} frame {win:>5} fmax {fmax:>7.0f}: fixed "
              f"[{f['db_min']:.1f}, {f['db_max']:.1f}] dB "
              + " ".join(f"{k} {v:.4f}" for k, v in f["distance"].items())
              + f" | clip max - {c['range_db']:.0f} dB: occupancy_l1 "
                f"{c['distance']['occupancy_l1']:.4f} histogram_emd "
                f"{c['distance']['histogram_emd']:.2f}", flush=True)
    preset = FrontEndConfig.preset("s2i-official")
    default = FrontEndConfig()
    shipped = {name: statistics(front_end_pixels(sounds, cfg))
               for name, cfg in (("s2i-official", preset), ("default", default))}
    measured = {name: distances(s, official) for name, s in shipped.items()}
    for name, d in measured.items():
        print(f"shipped front end '{name}' on the recordings vs official: "
              + " ".join(f"{k} {v:.4f}" for k, v in d.items()))
    if args.plot:
        plot(official, {"preset s2i-official on real recordings": shipped["s2i-official"],
                        "default (16 kHz, -80..20 dB) on real recordings": shipped["default"]},
             args.plot)
    if args.json:
        from runtime.artifacts import atomic_write_json
        atomic_write_json(args.json, {
            "config": config_json(args),
            "official": {"source": str(args.source.official), **evidence,
                         "stats": official.to_dict()},
            "recordings": [name for name, _, _ in sounds], "floor_grey_level": FLOOR,
            "layouts": layouts, "shipped": {
                name: {"config": cfg.to_dict(), "distance": measured[name],
                       "stats": shipped[name].to_dict()}
                for name, cfg in (("s2i-official", preset), ("default", default))}})
    return 0


if __name__ == "__main__":
    from runtime.errors import run_cli
    raise SystemExit(run_cli(lambda: main()))
