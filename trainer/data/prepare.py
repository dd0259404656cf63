"""``python -m trainer prepare SOURCE [SOURCE ...] --out STORE``: build a dataset store.

SOURCE is one of
  demo                      the built-in procedural demo set (no files needed)
  a folder of videos        ROOT/<class name>/*.mp4 (VEGAS layout), decoded with PyAV
  JPG spectrograms          a folder or .tar.gz of c00K_sNNNNN_wMMM.jpg (s2i_data)
  binary batches            .bin files or a folder of them (s2i_data audio / audio_visual)
The kind is detected from the path; ``--kind`` forces it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from runtime.config import parse_config, save_config
from runtime.errors import S2IError
from runtime.frontend import AUTHORS_FRONT_END, FrontEndConfig
from runtime.wire.images import save_png
from trainer.data.prepare_common import PrepareOptions
from trainer.data.prepare_s2i import build_from_bins, build_from_jpgs, is_archive
from trainer.data.prepare_videos import VIDEO_SUFFIXES, build_from_videos
from trainer.data.store import Store


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
        opts.front_end = FrontEndConfig.preset(AUTHORS_FRONT_END if found in ("jpg", "bin")
                                               else "default")
    if opts.out.exists() and not opts.overwrite:
        raise S2IError(f"{opts.out} already exists; pass --overwrite to replace it")
    if found == "demo":
        from trainer.data.demo_data import build_demo_store
        sizes = opts.demo_sizes
        build_demo_store(opts.out, sizes.train, sizes.val, sizes.test, seed=opts.seed,
                         windows_per_video=sizes.windows_per_video,
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
    opts = parse_config(PrepareOptions, argv, "python -m trainer prepare", __doc__)
    if not opts.sources:
        raise S2IError("give at least one SOURCE")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    start = time.perf_counter()
    with logging_redirect_tqdm():
        store = build(opts.sources, opts, opts.kind)
    save_config(opts, store.path / "config_prepare.json")
    print(store.describe())
    print(f"built in {time.perf_counter() - start:.1f} s")
    if opts.preview is not None:
        print(f"preview: {write_preview(store, Path(opts.preview))}")
    return 0


def write_preview(store: Store, path: Path, per_class: int = 6) -> Path:
    """A PNG for people: one row per class, ``per_class`` items of the first split, each its
    spectrogram (row 0 = highest band) and, when the store has them, its image."""
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
    save_png(path, grid)
    return path
