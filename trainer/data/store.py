"""Dataset stores: memory-mapped spectrograms (and images) on disk, plus a manifest.

A store is a directory written atomically (see docs/ARCHITECTURE.md)::

    STORE/manifest.json
    STORE/<split>/spectrograms.npy  uint8 [N, 128, 100]
    STORE/<split>/labels.npy        int64 [N]
    STORE/<split>/videos.npy        int64 [N]
    STORE/<split>/ids.json          [str] * N
    STORE/<split>/images.npy        uint8 [N, 96, 96, 3]   (only when has_images)

``Store(path)`` reads one; ``StoreWriter`` builds one. Arrays are opened with
``np.load(mmap_mode="r")`` so a store never has to fit in memory.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import (
    atomic_dir,
    atomic_write_json,
    check_format,
    check_replaceable,
    load_json,
    read_json,
    sha256_file,
)
from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig, from_uint8

STORE_FORMAT = "s2i-store"
STORE_VERSION = 1
SPLIT_NAMES = ("train", "val", "test")
IMAGE_SHAPE = (96, 96, 3)
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")   # a split folder or file in it

log = logging.getLogger("s2i.store")


@dataclass
class SplitArrays:
    """One split of a store. ``spectrograms`` and ``images`` are read-only memmaps."""

    name: str
    spectrograms: np.ndarray          # uint8 [N, n_mels, n_frames]
    labels: np.ndarray                # int64 [N]
    videos: np.ndarray                # int64 [N]
    ids: list[str]
    images: np.ndarray | None         # uint8 [N, 96, 96, 3] or None

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class Store:
    """A dataset store opened for reading; validates the manifest and the array files."""

    def __init__(self, path: str | Path, verify_checksums: bool = False) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise S2IError(f"store not found: {self.path} (build one with "
                           "`python -m trainer prepare SOURCE --out STORE`)")
        if not self.path.is_dir():
            raise S2IError(f"store {self.path} is a file; expected a store folder")
        manifest_path = self.path / "manifest.json"
        if not manifest_path.is_file():
            raise S2IError(f"{self.path} is not a dataset store (no manifest.json); build one "
                           "with `python -m trainer prepare SOURCE --out STORE`")
        manifest = check_format(read_json(manifest_path, "store manifest"), manifest_path,
                                "store manifest", STORE_FORMAT, STORE_VERSION,
                                "rebuild it with `python -m trainer prepare`")
        for key in ("classes", "has_images", "front_end", "splits", "checksums"):
            if key not in manifest:
                raise S2IError(f"store manifest {manifest_path} is damaged: it lacks '{key}'")
        if not isinstance(manifest["splits"], dict) or not manifest["splits"]:
            raise S2IError(f"store manifest {manifest_path} is damaged: it lists no splits")
        for name, split in manifest["splits"].items():
            count = split.get("count") if isinstance(split, dict) else None
            if not _NAME.fullmatch(name) or type(count) is not int or not 0 <= count < 2**40:
                raise S2IError(f"store manifest {manifest_path} is damaged: split {name[:40]!r} "
                               "should be a folder name (A-Z a-z 0-9 _ -) with a \"count\"")
        if not isinstance(manifest["classes"], list) or not manifest["classes"]:
            raise S2IError(f"store manifest {manifest_path} is damaged: it lists no classes")
        if not isinstance(manifest["checksums"], dict) or not all(
                isinstance(v, str) and all(_NAME.fullmatch(part) for part in k.split("/"))
                for k, v in manifest["checksums"].items()):
            raise S2IError(f"store manifest {manifest_path} is damaged: its checksums should "
                           "map files of the store (split/name) to sha256 digests")
        try:
            self.front_end = FrontEndConfig.from_dict(manifest["front_end"])
        except TypeError as exc:
            raise S2IError(f"store manifest {manifest_path} has a damaged front_end: {exc}") \
                from exc
        self.manifest: dict[str, Any] = manifest
        self.classes: list[str] = [str(c) for c in manifest["classes"]]
        self.has_images: bool = bool(manifest["has_images"])
        self._cache: dict[str, SplitArrays] = {}
        if verify_checksums:
            self.verify()

    def windows(self, split: str, count: int, seed: int, skip: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
        """``count`` windows of ``split`` (a seeded permutation's items ``skip`` to
        ``skip + count``, so that two calls with the same seed can pick disjoint sets), as the
        runtime feeds them: float32 ``[N,1,128,100]`` in [-1, 1]; and their positions."""
        arrays = self.split(split)
        n = len(arrays)
        picked = np.sort(np.random.default_rng(seed).permutation(n)[skip:skip + count])
        if len(picked) == 0:
            raise S2IError(f"store {self.path} has too few {split} windows ({n}) for "
                           f"{skip} + {count}")
        spectrograms = from_uint8(arrays.spectrograms[picked])[:, None]
        return np.ascontiguousarray(spectrograms, dtype=np.float32), picked

    def __getstate__(self) -> dict[str, Any]:
        """Pickles small (for worker processes): the memmaps are reopened, not copied."""
        state = self.__dict__.copy()
        state["_cache"] = {}
        return state

    @property
    def splits(self) -> list[str]:
        """Names of the splits present, in train/val/test order."""
        names = list(self.manifest["splits"])
        return sorted(names, key=lambda n: (SPLIT_NAMES.index(n) if n in SPLIT_NAMES else 9, n))

    @property
    def fingerprint(self) -> str:
        """Short hash of the store's file checksums: identifies the data a model saw."""
        canonical = json.dumps(self.manifest["checksums"], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def count(self, name: str) -> int:
        return int(self.manifest["splits"].get(name, {}).get("count", 0))

    def split(self, name: str) -> SplitArrays:
        """Open one split (memory-mapped); ``S2IError`` if it is missing or empty."""
        if name in self._cache:
            return self._cache[name]
        if name not in self.manifest["splits"]:
            raise S2IError(f"store {self.path} has no split '{name}'; it has "
                           f"{', '.join(self.splits)}")
        expected = self.count(name)
        if expected <= 0:
            raise S2IError(f"split '{name}' of store {self.path} is empty")
        folder = self.path / name
        n_mels, n_frames = self.front_end.n_mels, self.front_end.n_frames
        spectrograms = self._load(folder / "spectrograms.npy", np.uint8, (expected, n_mels,
                                                                          n_frames))
        labels = self._load(folder / "labels.npy", np.int64, (expected,))
        videos = self._load(folder / "videos.npy", np.int64, (expected,))
        images = (self._load(folder / "images.npy", np.uint8, (expected, *IMAGE_SHAPE))
                  if self.has_images else None)
        ids_path = folder / "ids.json"
        ids = load_json(ids_path, "store file")
        if not isinstance(ids, list) or len(ids) != expected:
            raise S2IError(f"store file {ids_path} is damaged: expected a list of {expected} ids")
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.classes)):
            raise S2IError(f"store file {folder / 'labels.npy'} holds labels outside "
                           f"0..{len(self.classes) - 1}")
        arrays = SplitArrays(name, spectrograms, labels, videos, [str(i) for i in ids], images)
        self._cache[name] = arrays
        return arrays

    def _load(self, path: Path, dtype: type, shape: tuple[int, ...]) -> np.ndarray:
        if not path.is_file():
            raise S2IError(f"store file missing: {path} (the store is incomplete; rebuild it)")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise S2IError(f"store file {path} is damaged: {exc}") from exc
        if array.dtype != np.dtype(dtype) or tuple(array.shape) != shape:
            raise S2IError(f"store file {path} holds {array.dtype} {tuple(array.shape)}; the "
                           f"manifest expects {np.dtype(dtype)} {shape}")
        return array

    def verify(self) -> None:
        """Recompute every file's sha256 and compare with the manifest."""
        for rel, digest in self.manifest["checksums"].items():
            path = self.path / rel
            if not path.is_file():
                raise S2IError(f"store file missing: {path}")
            if sha256_file(path) != digest:
                raise S2IError(f"store file {path} does not match the sha256 in its manifest "
                               "(changed after the build); rebuild the store")

    def describe(self) -> str:
        """A few lines for people: splits, counts per class, skipped items."""
        lines = [f"store {self.path}: {len(self.classes)} classes, "
                 f"{'spectrograms + images' if self.has_images else 'spectrograms only'}"]
        for name in self.splits:
            info = self.manifest["splits"][name]
            per_class = ", ".join(f"{c} {n}" for c, n in zip(self.classes, info["per_class"],
                                                             strict=False))
            lines.append(f"  {name}: {info['count']} items from {info.get('videos', '?')} "
                         f"videos ({per_class})")
        if self.manifest.get("skipped"):
            lines.append("  skipped: " + ", ".join(f"{k} {v}" for k, v in
                                                   sorted(self.manifest["skipped"].items())))
        return "\n".join(lines)


class SplitWriter:
    """Appends items of one split to preallocated ``.npy`` memmaps (never all in memory)."""

    def __init__(self, folder: Path, name: str, capacity: int, spec_shape: tuple[int, int],
                 has_images: bool) -> None:
        self.folder = folder
        self.name = name
        self.capacity = max(int(capacity), 0)
        self.spec_shape = spec_shape
        self.has_images = has_images
        folder.mkdir(parents=True, exist_ok=True)
        self._spectrograms = np.lib.format.open_memmap(
            folder / "spectrograms.npy", mode="w+", dtype=np.uint8,
            shape=(self.capacity, *spec_shape))
        self._images = (np.lib.format.open_memmap(folder / "images.npy", mode="w+",
                                                  dtype=np.uint8,
                                                  shape=(self.capacity, *IMAGE_SHAPE))
                        if has_images else None)
        self.labels: list[int] = []
        self.videos: list[int] = []
        self.ids: list[str] = []

    def __len__(self) -> int:
        return len(self.labels)

    def append(self, spectrogram: np.ndarray, label: int, video: int, item_id: str,
               image: np.ndarray | None = None) -> None:
        """Add one item: ``spectrogram`` uint8 [n_mels, n_frames], ``image`` uint8 [96,96,3]."""
        self.append_batch(np.asarray(spectrogram)[None], [label], [video], [item_id],
                          None if image is None else np.asarray(image)[None])

    def append_batch(self, spectrograms: np.ndarray, labels: Sequence[int],
                     videos: Sequence[int], ids: Sequence[str],
                     images: np.ndarray | None = None) -> None:
        n = len(labels)
        start = len(self.labels)
        if start + n > self.capacity:
            raise S2IError(f"split '{self.name}': more items ({start + n}) than the "
                           f"{self.capacity} reserved")
        if spectrograms.dtype != np.uint8 or spectrograms.shape != (n, *self.spec_shape):
            raise S2IError(f"split '{self.name}': spectrograms must be uint8 "
                           f"{(n, *self.spec_shape)}, got {spectrograms.dtype} "
                           f"{spectrograms.shape}")
        if not (len(videos) == len(ids) == n):
            raise S2IError(f"split '{self.name}': labels, videos and ids differ in length")
        self._spectrograms[start:start + n] = spectrograms
        if self._images is not None:
            if images is None or images.dtype != np.uint8 or images.shape != (n, *IMAGE_SHAPE):
                raise S2IError(f"split '{self.name}': images must be uint8 "
                               f"{(n, *IMAGE_SHAPE)}, got "
                               f"{None if images is None else (images.dtype, images.shape)}")
            self._images[start:start + n] = images
        self.labels.extend(int(x) for x in labels)
        self.videos.extend(int(x) for x in videos)
        self.ids.extend(str(x) for x in ids)

    def select(self, keep: np.ndarray) -> None:
        """Keep only the items at the (sorted, unique) indices ``keep``, compacting in place."""
        keep = np.unique(np.asarray(keep, dtype=np.int64))
        if keep.size and (keep[0] < 0 or keep[-1] >= len(self.labels)):
            raise S2IError(f"split '{self.name}': selection outside 0..{len(self.labels) - 1}")
        for array in (self._spectrograms, self._images):
            if array is None:
                continue
            # keep[j] >= j, so block i only reads rows at or after the rows it overwrites
            for start in range(0, keep.size, 1024):
                block = keep[start:start + 1024]
                array[start:start + block.size] = array[block]
        self.labels = [self.labels[i] for i in keep]
        self.videos = [self.videos[i] for i in keep]
        self.ids = [self.ids[i] for i in keep]

    def close(self) -> int:
        """Flush, shrink the arrays to the items written, write labels/videos/ids."""
        n = len(self.labels)
        for attr, filename in (("_spectrograms", "spectrograms.npy"), ("_images", "images.npy")):
            array = getattr(self, attr)
            if array is None:
                continue
            array.flush()
            shape = (n, *array.shape[1:])
            dtype = array.dtype
            setattr(self, attr, None)
            del array
            if n < self.capacity:
                _shrink_npy(self.folder / filename, shape, dtype)
        np.save(self.folder / "labels.npy", np.asarray(self.labels, dtype=np.int64))
        np.save(self.folder / "videos.npy", np.asarray(self.videos, dtype=np.int64))
        (self.folder / "ids.json").write_text(json.dumps(self.ids))
        return n


def _shrink_npy(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Cut a ``.npy`` file down to its first ``shape[0]`` rows, in place when the header fits."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        else:
            np.lib.format.read_array_header_2_0(f)
        old_offset = f.tell()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    new_header = buffer.getvalue()
    data_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(new_header) == old_offset:
        with open(path, "r+b") as f:
            f.write(new_header)
            f.truncate(old_offset + data_bytes)
        return
    tmp = path.with_suffix(".shrink.tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        dst.write(new_header)
        src.seek(old_offset)
        left = data_bytes
        while left:
            block = src.read(min(left, 1 << 24))
            dst.write(block)
            left -= len(block)
    os.replace(tmp, path)


class StoreWriter:
    """Builds a store in a temp folder beside ``out`` and renames it into place at the end.

    Use as a context manager::

        with StoreWriter(out, classes, front_end, has_images, source={...}) as writer:
            train = writer.open_split("train", capacity=1000)
            train.append(spec_u8, label, video, "c001_s00001_w000", image_u8)
            writer.skip("silent audio", "clip.mp4")

    If anything raises inside the block, no store is left behind (an older store at
    ``out`` stays untouched).
    """

    def __init__(self, out: str | Path, classes: Sequence[str], front_end: FrontEndConfig,
                 has_images: bool, source: dict[str, Any], replace: bool = True) -> None:
        self.out = Path(out)
        self.classes = [str(c) for c in classes]
        self.front_end = front_end
        self.has_images = bool(has_images)
        self.source = dict(source)
        self.replace = replace
        self.skipped: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}
        self._splits: dict[str, SplitWriter] = {}
        self._context: Any = None
        self.tmp: Path | None = None
        self.manifest: dict[str, Any] | None = None

    def __enter__(self) -> StoreWriter:
        check_replaceable(self.out, "dataset store", STORE_FORMAT, overwrite=self.replace)
        self._context = atomic_dir(self.out, replace=self.replace)
        self.tmp = self._context.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        try:
            if exc_type is None:
                self._finish()
        except BaseException as err:
            self._close_quietly()
            self._context.__exit__(type(err), err, err.__traceback__)
            raise
        if exc_type is not None:
            self._close_quietly()
        return bool(self._context.__exit__(exc_type, exc, tb))

    def open_split(self, name: str, capacity: int) -> SplitWriter:
        """Reserve room for up to ``capacity`` items of split ``name``."""
        if self.tmp is None:
            raise RuntimeError("StoreWriter.open_split outside its `with` block")
        if name in self._splits:
            raise S2IError(f"split '{name}' opened twice")
        if not name or "/" in name or name.startswith("."):
            raise S2IError(f"invalid split name {name!r}")
        writer = SplitWriter(self.tmp / name, name, capacity,
                             (self.front_end.n_mels, self.front_end.n_frames), self.has_images)
        self._splits[name] = writer
        return writer

    def skip(self, reason: str, what: str = "") -> None:
        """Count (and log) one item left out, by reason."""
        self.skipped[reason] += 1
        if self.skipped[reason] <= 5:
            log.warning("skipped %s: %s", what or "item", reason)
        elif self.skipped[reason] == 6:
            log.warning("more items skipped for '%s'; the manifest counts them all", reason)

    def balance(self, seed: int = 0) -> dict[str, int]:
        """Equal items per class in every split (the paper's balancing): drop random extras.

        Classes absent from a split are ignored there. Returns items dropped per split.
        """
        dropped: dict[str, int] = {}
        rng = np.random.default_rng(seed)
        for name, split in self._splits.items():
            labels = np.asarray(split.labels, dtype=np.int64)
            present = [k for k in range(len(self.classes)) if (labels == k).any()]
            if not present:
                continue
            least = min(int((labels == k).sum()) for k in present)
            keep = np.concatenate([np.sort(rng.choice(np.flatnonzero(labels == k), least,
                                                      replace=False)) for k in present])
            dropped[name] = int(labels.size - keep.size)
            split.select(np.sort(keep))
        self.extra["balanced"] = {"seed": int(seed), "dropped": dropped}
        return dropped

    def _close_quietly(self) -> None:
        for split in self._splits.values():
            split._spectrograms = None
            split._images = None

    def _finish(self) -> None:
        assert self.tmp is not None
        splits: dict[str, Any] = {}
        for name, writer in self._splits.items():
            n = writer.close()
            if n == 0:
                raise S2IError(f"split '{name}' came out empty (all items skipped or none "
                               f"found; skipped: {dict(self.skipped) or 'none'})")
            labels = np.asarray(writer.labels)
            splits[name] = {
                "count": n,
                "per_class": np.bincount(labels, minlength=len(self.classes)).tolist(),
                "videos": int(len(set(writer.videos))),
            }
        if not splits:
            raise S2IError(f"nothing to store: no item was usable (skipped: "
                           f"{dict(self.skipped) or 'none'})")
        checksums = {}
        for path in sorted(self.tmp.rglob("*")):
            if path.is_file():
                checksums[path.relative_to(self.tmp).as_posix()] = sha256_file(path)
        self.manifest = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "source": self.source,
            "classes": self.classes,
            "has_images": self.has_images,
            "front_end": self.front_end.to_dict(),
            "splits": splits,
            "skipped": dict(sorted(self.skipped.items())),
            "checksums": checksums,
            **self.extra,
        }
        atomic_write_json(self.tmp / "manifest.json", self.manifest)


def iter_batches(n: int, batch: int) -> Iterator[slice]:
    """Consecutive slices of ``batch`` items covering ``range(n)``."""
    for start in range(0, n, batch):
        yield slice(start, min(start + batch, n))
