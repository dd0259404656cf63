"""Stores from a folder of videos with sound, one subfolder per class (the VEGAS layout).

Each video is decoded with PyAV: audio mixed to mono and resampled with soxr to the front
end's rate, cut into 1-s segments (at most ``max_seconds``); each segment's log-mel and the
video frame nearest its centre, center-cropped and resized to 96x96 RGB. Splits are by
source video. A file that cannot be used is skipped with a counted reason.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr
from PIL import Image
from tqdm import tqdm

from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig, log_mel_batch, log_mel_clip, to_uint8
from trainer.data.prepare_common import SPLITS, VEGAS_CLASSES, PrepareOptions, split_by_video
from trainer.data.store import StoreWriter

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi")
IMAGE_SIZE = 96


class SkipVideo(Exception):
    """A video left out, with the reason counted in the manifest."""


@dataclass
class DecodedVideo:
    spectrograms: np.ndarray                 # uint8 [n, 128, 100]
    images: np.ndarray                       # uint8 [n, 96, 96, 3]
    windows: list[int]
    skipped: Counter[str] = field(default_factory=Counter)


def list_videos(root: Path, classes: list[str] | None) -> tuple[list[str], list[list[Path]]]:
    """Class names (subfolders) and their video files, in a fixed order."""
    if not root.is_dir():
        raise S2IError(f"video folder not found: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes:
        by_name = {p.name: p for p in folders}
        missing = [c for c in classes if c not in by_name]
        if missing:
            raise S2IError(f"{root} has no class folders {missing}; it has "
                           f"{sorted(by_name)}")
        folders = [by_name[c] for c in classes]
    else:
        vegas = {c.lower().replace(" ", "_"): i for i, c in enumerate(VEGAS_CLASSES)}
        folders.sort(key=lambda p: (vegas.get(p.name.lower().replace(" ", "_"), 99), p.name))
    files = [sorted(f for f in folder.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES)
             for folder in folders]
    if not any(files):
        raise S2IError(f"no video files ({', '.join(VIDEO_SUFFIXES)}) in the class subfolders "
                       f"of {root}; expected ROOT/<class name>/<video>.mp4")
    return [f.name for f in folders], files


def square_96(rgb: np.ndarray) -> np.ndarray:
    """Center square crop, resized to 96x96 RGB (antialiased)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(rgb[top:top + side, left:left + side])
    return np.asarray(crop.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC),
                      dtype=np.uint8)


def decode_video(path: Path, cfg: FrontEndConfig, max_seconds: int = 10) -> DecodedVideo:
    """One video -> its usable 1-s segments; raises ``SkipVideo(reason)`` when none are."""
    import av

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise SkipVideo("unreadable video file") from exc
    with container:
        if not container.streams.audio:
            raise SkipVideo("no audio track")
        if not container.streams.video:
            raise SkipVideo("no video track")
        audio_stream = container.streams.audio[0]
        video_stream = container.streams.video[0]
        video_stream.thread_type = "AUTO"
        resampler = av.AudioResampler(format="fltp")        # float planar, same layout/rate
        audio_start = (float(audio_stream.start_time * audio_stream.time_base)
                       if audio_stream.start_time is not None else 0.0)
        centres = audio_start + np.arange(max_seconds) + cfg.window_seconds / 2
        nearest: list[tuple[float, object] | None] = [None] * max_seconds
        chunks: list[np.ndarray] = []
        rate = None
        try:
            for packet in container.demux(audio_stream, video_stream):
                for frame in packet.decode():
                    if packet.stream.type == "audio":
                        for out in resampler.resample(frame):
                            rate = out.sample_rate
                            chunks.append(out.to_ndarray().mean(axis=0))
                    elif frame.time is not None:
                        gaps = np.abs(centres - float(frame.time))
                        for w in np.flatnonzero(gaps <= cfg.window_seconds / 2):
                            best = nearest[w]
                            if best is None or gaps[w] < best[0]:
                                nearest[w] = (float(gaps[w]), frame)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise SkipVideo("corrupt video (decoding failed)") from exc
    if not chunks or rate is None:
        raise SkipVideo("no decodable audio")
    if all(best is None for best in nearest):
        raise SkipVideo("no decodable video frames")
    audio = np.concatenate(chunks).astype(np.float32)
    if not np.isfinite(audio).all():
        raise SkipVideo("audio has NaN/inf samples")
    if not np.any(audio):
        raise SkipVideo("silent audio (all samples zero)")
    if rate != cfg.sample_rate:
        audio = soxr.resample(audio, rate, cfg.sample_rate, quality="HQ").astype(np.float32)
    n_segments = min(len(audio) // cfg.n_samples, max_seconds)
    if n_segments == 0:
        raise SkipVideo("audio shorter than one window")
    skipped: Counter[str] = Counter()
    windows, segments, images = [], [], []
    for w in range(n_segments):
        segment = audio[w * cfg.n_samples:(w + 1) * cfg.n_samples]
        if not np.any(segment):
            skipped["silent segment"] += 1
            continue
        best = nearest[w]
        if best is None:
            skipped["no video frame within the segment"] += 1
            continue
        rgb = best[1].to_ndarray(format="rgb24")  # type: ignore[attr-defined]
        windows.append(w)
        segments.append(np.clip(segment, -1.0, 1.0))
        images.append(square_96(rgb))
    if not segments:
        raise SkipVideo("no usable segment")
    if cfg.level == "clip":   # the level is the whole clip's: scale all, keep the used ones
        whole = np.clip(audio[: n_segments * cfg.n_samples], -1.0, 1.0)
        spectrograms = to_uint8(log_mel_clip(whole, cfg)[windows])
    else:
        spectrograms = to_uint8(log_mel_batch(np.stack(segments), cfg))
    return DecodedVideo(spectrograms, np.stack(images), windows, skipped)


def _decode_job(job: tuple[str, dict, int]) -> DecodedVideo | str:
    path, cfg_dict, max_seconds = job
    try:
        return decode_video(Path(path), FrontEndConfig.from_dict(cfg_dict), max_seconds)
    except SkipVideo as exc:
        return str(exc)


def build_from_videos(root: Path, opts: PrepareOptions) -> Path:
    """A VEGAS-layout folder of videos -> a store with spectrograms and images."""
    classes, files = list_videos(root, opts.classes)
    videos = {k: [str(f) for f in class_files] for k, class_files in enumerate(files)}
    assignment = split_by_video(videos, opts.fractions, opts.seed)  # type: ignore[arg-type]
    video_ids = {str(f): i for i, f in enumerate(f for class_files in files for f in class_files)}
    source = {"kind": "videos", "path": str(root.resolve()), "classes_from": "subfolders",
              "videos": {c: len(f) for c, f in zip(classes, files, strict=True)},
              "fractions": list(opts.fractions), "seed": opts.seed,
              "max_seconds": opts.max_seconds}
    front_end = opts.front_end or FrontEndConfig()
    cfg_dict = front_end.to_dict()
    with StoreWriter(opts.out, classes, front_end, has_images=True, source=source,
                     replace=opts.overwrite) as writer:
        for split in SPLITS:
            jobs = [(str(f), k) for k, class_files in enumerate(files) for f in class_files
                    if assignment[str(f)] == split]
            if not jobs:
                continue
            out = writer.open_split(split, len(jobs) * opts.max_seconds)
            work = [(path, cfg_dict, opts.max_seconds) for path, _ in jobs]
            bar = tqdm(total=len(jobs), desc=f"videos ({split})", unit="video",
                       disable=not opts.progress)
            for (path, k), result in zip(jobs, _map(work, opts.workers), strict=True):
                bar.update(1)
                if isinstance(result, str):
                    writer.skip(result, path)
                    continue
                for reason, count in result.skipped.items():
                    for _ in range(count):
                        writer.skip(reason, path)
                stem = Path(path).stem
                n = len(result.windows)
                out.append_batch(result.spectrograms, [k] * n, [video_ids[path]] * n,
                                 [f"{stem}_w{w:03d}" for w in result.windows], result.images)
            bar.close()
        if opts.balance:
            writer.balance(opts.seed)
    return opts.out


def _map(work: list[tuple[str, dict, int]], workers: int):
    """Decode in a process pool when it pays (several workers and videos), else in-process."""
    if workers <= 1 or len(work) < 4:
        yield from map(_decode_job, work)
        return
    context = multiprocessing.get_context("spawn")   # no fork: the parent may hold threads
    with context.Pool(min(workers, len(work))) as pool:
        yield from pool.imap(_decode_job, work)
