"""``python -m trainer prepare SOURCE [SOURCE ...] --out STORE``: build a dataset store.

SOURCE is one of
  demo                      the built-in procedural demo set (no files needed)
  a folder of videos        ROOT/<class name>/*.mp4 (VEGAS layout), decoded with PyAV
  JPG spectrograms          a folder or .tar.gz of c00K_sNNNNN_wMMM.jpg (s2i_data)
  binary batches            .bin files or a folder of them (s2i_data audio / audio_visual)
The kind is detected from the path; ``--kind`` forces it.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import logging
import time
from pathlib import Path

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from runtime.errors import S2IError
from runtime.frontend import FRONT_END_PRESETS, FrontEndConfig
from trainer.data.prepare_common import PrepareOptions, check_fractions
from trainer.data.prepare_s2i import build_from_bins, build_from_jpgs, is_archive
from trainer.data.prepare_videos import VIDEO_SUFFIXES, build_from_videos
from trainer.data.store import Store

KINDS = ("auto", "demo", "videos", "jpg", "bin")


def detect_kind(source: str) -> str:
    """What a SOURCE argument is: demo, videos, jpg or bin."""
    if source == "demo":
        return "demo"
    path = Path(source)
    if not path.exists():
        raise S2IError(f"source not found: {source} (expected 'demo', a folder of class "
                       "subfolders with videos, JPG spectrograms or .bin batches)")
    if is_archive(path):
        return "jpg"
    if path.is_file():
        if path.suffix.lower() == ".bin":
            return "bin"
        raise S2IError(f"cannot use {path} as a source: expected a folder, a .tar.gz of JPG "
                       "spectrograms or a .bin batch file")
    for child in sorted(path.rglob("*")):
        suffix = child.suffix.lower()
        if suffix in (".jpg", ".jpeg"):
            return "jpg"
        if suffix == ".bin":
            return "bin"
        if suffix in VIDEO_SUFFIXES:
            return "videos"
    raise S2IError(f"{path} holds no videos ({', '.join(VIDEO_SUFFIXES)}), .jpg spectrograms "
                   "or .bin batches")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="'demo', a video folder, JPG folder/.tar.gz, or .bin files/folder")
    p.add_argument("--out", required=True, type=Path, help="store folder to write")
    p.add_argument("--kind", choices=KINDS, default="auto", help="source kind (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, balancing, demo")
    p.add_argument("--balance", action=argparse.BooleanOptionalAction, default=None,
                   help="equal items per class in each split, as the paper does (default: on "
                        "for videos; off for the authors' JPG/bin sets, balanced at the source)")
    p.add_argument("--split", default=None,
                   help="JPG/bin: put every input in this split (default: from folder/file "
                        "names train|val|test, data_/val_/test_batch)")
    p.add_argument("--resplit", action="store_true",
                   help="JPG/audio-visual bin: ignore folder names, split by video (--fractions)")
    p.add_argument("--fractions", type=float, nargs=3, default=(0.8, 0.1, 0.1),
                   metavar=("TRAIN", "VAL", "TEST"), help="split fractions by video "
                   "(default: 0.8 0.1 0.1)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="class names in label order (videos: the subfolder names to use)")
    p.add_argument("--limit", type=int, default=None,
                   help="use at most N items (files/records) of each input")
    p.add_argument("--max-seconds", type=int, default=10, help="videos: 1-s segments per video "
                   "at most (default: 10)")
    p.add_argument("--workers", type=int, default=2, help="videos: decoding processes")
    p.add_argument("--bin-format", choices=("auto", "audio", "audio-visual"), default="auto")
    p.add_argument("--label-base", choices=("auto", "0", "1"), default="auto",
                   help="audio .bin label bytes count classes from 0 or 1 (default: detect)")
    p.add_argument("--front-end", choices=sorted(FRONT_END_PRESETS), default=None,
                   help="the front end the store's spectrograms are (stamped in the store; "
                        "default: s2i-official for the authors' JPG/bin spectrograms, "
                        "'default' for videos/demo; docs/DATA.md)")
    p.add_argument("--sample-rate", type=int, default=None,
                   help="videos/demo: front-end sample rate (default: the front end's)")
    p.add_argument("--demo-train", type=int, default=240, help="demo: train clips per class")
    p.add_argument("--demo-val", type=int, default=40, help="demo: val clips per class")
    p.add_argument("--demo-test", type=int, default=40, help="demo: test clips per class")
    p.add_argument("--demo-windows", type=int, default=5, help="demo: 1-s windows per video")
    p.add_argument("--preview", type=Path, default=None,
                   help="also write a PNG grid of a few items per class")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def options_from_args(args: argparse.Namespace) -> PrepareOptions:
    if args.limit is not None and args.limit <= 0:
        raise S2IError(f"--limit must be positive, got {args.limit}")
    if args.max_seconds <= 0:
        raise S2IError(f"--max-seconds must be positive, got {args.max_seconds}")
    for name in ("demo_train", "demo_val", "demo_test"):
        if getattr(args, name) < 0:
            raise S2IError(f"--{name.replace('_', '-')} must not be negative")
    if args.demo_windows <= 0:
        raise S2IError("--demo-windows must be positive")
    front_end = FrontEndConfig.preset(args.front_end) if args.front_end else None
    if args.sample_rate:
        front_end = dataclasses.replace(front_end or FrontEndConfig(),
                                        sample_rate=args.sample_rate)
    return PrepareOptions(
        out=args.out, overwrite=args.overwrite, seed=args.seed, balance=args.balance,
        split=args.split, resplit=args.resplit, fractions=check_fractions(args.fractions),
        classes=args.classes, limit=args.limit, max_seconds=args.max_seconds,
        workers=max(1, args.workers), bin_format=args.bin_format, label_base=args.label_base,
        front_end=front_end, progress=not args.quiet, demo_train=args.demo_train,
        demo_val=args.demo_val, demo_test=args.demo_test, demo_windows=args.demo_windows)


def build(sources: list[str], opts: PrepareOptions, kind: str = "auto") -> Store:
    """Build the store described by ``sources`` and ``opts``; return it opened."""
    kinds = {detect_kind(s) if kind == "auto" else kind for s in sources}
    if len(kinds) != 1:
        raise S2IError(f"the sources are of different kinds ({', '.join(sorted(kinds))}); "
                       "build one store per kind")
    found = kinds.pop()
    if opts.balance is None:   # the paper balances classes; its published sets already are
        opts.balance = found == "videos"
    if opts.front_end is None:   # the authors' spectrograms are their front end's, not ours
        opts.front_end = FrontEndConfig.preset("s2i-official" if found in ("jpg", "bin")
                                               else "default")
    if opts.out.exists() and not opts.overwrite:
        raise S2IError(f"{opts.out} already exists; pass --overwrite to replace it")
    if found == "demo":
        from trainer.data.demo_data import build_demo_store
        build_demo_store(opts.out, opts.demo_train, opts.demo_val, opts.demo_test,
                         seed=opts.seed, windows_per_video=opts.demo_windows,
                         front_end=opts.front_end or FrontEndConfig(), progress=opts.progress,
                         replace=True)
    elif found == "videos":
        if len(sources) != 1:
            raise S2IError("give one video folder (with one subfolder per class)")
        build_from_videos(Path(sources[0]), opts)
    elif found == "jpg":
        build_from_jpgs([Path(s) for s in sources], opts)
    else:
        build_from_bins([Path(s) for s in sources], opts)
    return Store(opts.out)


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    opts = options_from_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    with logging_redirect_tqdm():
        store = build(args.sources, opts, args.kind)
    print(store.describe())
    print(f"built in {time.perf_counter() - start:.1f} s")
    if args.preview is not None:
        print(f"preview: {write_preview(store, args.preview)}")
    return 0


def write_preview(store: Store, path: Path, per_class: int = 6) -> Path:
    """A PNG for people: one row per class, ``per_class`` items of the first split, each its
    spectrogram (row 0 = highest band) and, when the store has them, its image."""
    from PIL import Image

    from runtime.manifest import atomic_write_bytes

    split = store.split(store.splits[0])
    height = max(store.front_end.n_mels, 96 if store.has_images else 0)
    rows = []
    for k in range(len(store.classes)):
        tiles = []
        for i in np.flatnonzero(np.asarray(split.labels) == k)[:per_class]:
            tile = np.zeros((height, store.front_end.n_frames + (100 if store.has_images
                                                                 else 4), 3), np.uint8)
            tile[: store.front_end.n_mels, : store.front_end.n_frames] = \
                np.asarray(split.spectrograms[i])[..., None]
            if split.images is not None:
                tile[:96, store.front_end.n_frames + 2: store.front_end.n_frames + 98] = \
                    split.images[i]
            tiles.append(tile)
        if tiles:
            rows.append(np.concatenate(tiles, axis=1))
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)))
                           for r in rows])
    buffer = io.BytesIO()
    Image.fromarray(grid).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
