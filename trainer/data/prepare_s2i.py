"""Stores from the authors' published s2i_data formats: JPG spectrogram folders/archives and
binary batches (audio-only and audio-visual). See ../shared/REFERENCE.md for the layouts."""

from __future__ import annotations

import io
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from runtime.artifacts import sha256_file
from runtime.errors import S2IError
from trainer.data.prepare_common import (
    SEGMENT_NAME,
    SPLITS,
    VEGAS_CLASSES,
    PrepareOptions,
    official_front_end,
    segment_id,
    split_by_video,
    split_from_path,
    video_key,
)
from trainer.data.store import SplitWriter, StoreWriter

SPEC_SHAPE = (128, 100)
SPEC_BYTES = 128 * 100
IMAGE_BYTES = 96 * 96 * 3
ID_BYTES = 11
AUDIO_RECORD = 1 + SPEC_BYTES
AUDIO_VISUAL_RECORD = ID_BYTES + SPEC_BYTES + IMAGE_BYTES
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tar.xz")
CHUNK = 512


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


# --------------------------------------------------------------------------- JPG folders

@dataclass
class _Jpg:
    split: str
    label: int
    video: int
    item_id: str


def _iter_jpg_bytes(source: Path, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` of every JPG in a folder or a tar archive (read by streaming)."""
    if is_archive(source):
        try:
            with tarfile.open(source, "r|*") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.lower().endswith((".jpg",
                                                                               ".jpeg")):
                        continue
                    if wanted is not None and member.name not in wanted:
                        continue
                    handle = tar.extractfile(member)
                    yield member.name, handle.read() if handle else b""
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise S2IError(f"cannot read archive {source}: {exc}") from exc
        return
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg") and path.is_file():
            name = path.relative_to(source).as_posix()
            if wanted is None or name in wanted:
                yield name, path.read_bytes()


def _list_jpgs(source: Path) -> list[str]:
    if is_archive(source):
        try:
            with tarfile.open(source, "r|*") as tar:
                return [m.name for m in tar
                        if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg"))]
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise S2IError(f"cannot read archive {source}: {exc}") from exc
    return sorted(p.relative_to(source).as_posix() for p in source.rglob("*")
                  if p.suffix.lower() in (".jpg", ".jpeg") and p.is_file())


def decode_spectrogram_jpg(data: bytes) -> np.ndarray | str:
    """JPG bytes -> uint8 [128, 100], or the reason it cannot be used."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.size != (SPEC_SHAPE[1], SPEC_SHAPE[0]):
                return "wrong spectrogram size (expected 100x128 pixels)"
            if image.mode != "L":
                image = image.convert("L")
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return "unreadable JPG"


def build_from_jpgs(inputs: list[Path], opts: PrepareOptions) -> Path:
    """JPG spectrogram folders or archives (``c00K_sNNNNN_wMMM.jpg``) -> audio-only store."""
    classes = list(opts.classes or VEGAS_CLASSES)
    sources = []
    for source in inputs:
        entry: dict[str, object] = {"path": str(source.resolve())}
        if is_archive(source):
            entry["sha256"] = sha256_file(source)
        sources.append(entry)
    manifest_source = {"kind": "s2i-jpg", "inputs": sources,
                       "note": "spectrograms made by the s2i_data authors' front end"}
    with StoreWriter(opts.out, classes, official_front_end(opts), has_images=False,
                     source=manifest_source, replace=opts.overwrite) as writer:
        plans: list[dict[str, _Jpg]] = []
        for source, entry in zip(inputs, sources, strict=True):
            names = _list_jpgs(source)
            if not names:
                raise S2IError(f"no .jpg spectrograms found in {source}")
            if opts.limit is not None:
                names = names[: opts.limit]
            entry["files"] = len(names)
            plans.append(_plan_jpgs(source, names, len(classes), opts, writer))
        if opts.resplit:
            _resplit(plans, opts)
        split_writers = _open_splits(writer, [[j.split for j in plan.values()] for plan in plans])
        total = sum(len(plan) for plan in plans)
        with tqdm(total=total, desc="JPG spectrograms", unit="file",
                  disable=not opts.progress) as bar:
            for source, plan in zip(inputs, plans, strict=True):
                _decode_jpgs(source, plan, split_writers, writer, bar)
        if opts.balance:
            writer.balance(opts.seed)
    return opts.out


def _plan_jpgs(source: Path, names: list[str], n_classes: int, opts: PrepareOptions,
               writer: StoreWriter) -> dict[str, _Jpg]:
    plan: dict[str, _Jpg] = {}
    for name in names:
        match = SEGMENT_NAME.match(Path(name).name)
        if not match:
            writer.skip("file name not c00K_sNNNNN_wMMM.jpg", f"{source}:{name}")
            continue
        k, video, window = (int(g) for g in match.groups())
        if not 1 <= k <= n_classes:
            writer.skip(f"class number outside 1..{n_classes}", f"{source}:{name}")
            continue
        split = opts.split or split_from_path(name) or ("" if opts.resplit else None)
        if split is None:
            raise S2IError(f"cannot tell the split of {source}:{name} (no train/val/test "
                           "folder in its path); pass --split NAME or --resplit")
        plan[name] = _Jpg(split, k - 1, video_key(k - 1, video),
                          segment_id(k - 1, video, window))
    return plan


def _resplit(plans: list[dict[str, _Jpg]], opts: PrepareOptions) -> None:
    videos: dict[int, list[int]] = {}
    for plan in plans:
        for item in plan.values():
            videos.setdefault(item.label, []).append(item.video)
    assignment = split_by_video(videos, opts.fractions, opts.seed)  # type: ignore[arg-type]
    for plan in plans:
        for item in plan.values():
            item.split = assignment[item.video]


def _open_splits(writer: StoreWriter, split_lists: list[list[str]]) -> dict[str, SplitWriter]:
    counts = Counter(s for splits in split_lists for s in splits)
    order = sorted(counts, key=lambda s: (SPLITS.index(s) if s in SPLITS else 9, s))
    return {name: writer.open_split(name, counts[name]) for name in order if counts[name]}


def _decode_jpgs(source: Path, plan: dict[str, _Jpg], splits: dict[str, SplitWriter],
                 writer: StoreWriter, bar: tqdm) -> None:
    pending: dict[str, list[tuple[np.ndarray, _Jpg]]] = {name: [] for name in splits}

    def flush(name: str) -> None:
        items = pending[name]
        if items:
            splits[name].append_batch(np.stack([s for s, _ in items]),
                                      [j.label for _, j in items], [j.video for _, j in items],
                                      [j.item_id for _, j in items])
            items.clear()

    done: set[str] = set()
    for name, data in _iter_jpg_bytes(source, set(plan)):
        if name in done:
            writer.skip("duplicate file in the input", f"{source}:{name}")
            continue
        done.add(name)
        item = plan[name]
        spectrogram = decode_spectrogram_jpg(data)
        bar.update(1)
        if isinstance(spectrogram, str):
            writer.skip(spectrogram, f"{source}:{name}")
            continue
        pending[item.split].append((spectrogram, item))
        if len(pending[item.split]) >= CHUNK:
            flush(item.split)
    for name in pending:
        flush(name)


# --------------------------------------------------------------------------- binary batches

def bin_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            found = sorted(path.rglob("*.bin"))
            if not found:
                raise S2IError(f"no .bin batch files in {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise S2IError(f"binary batch input not found: {path}")
    return files


def bin_format(path: Path, forced: str) -> str:
    """``audio`` (1 label byte + 12,800) or ``audio-visual`` (11-byte id + 12,800 + 27,648)."""
    if forced in ("audio", "audio-visual"):
        return forced
    if "audio_visual" in path.as_posix() or "audio-visual" in path.as_posix():
        return "audio-visual"
    size = path.stat().st_size
    if size % AUDIO_VISUAL_RECORD == 0 and size % AUDIO_RECORD != 0:
        return "audio-visual"
    return "audio"


def bin_split(path: Path, opts: PrepareOptions) -> str:
    if opts.split:
        return opts.split
    stem = path.name.lower()
    for prefix, split in (("data_", "train"), ("train", "train"), ("val", "val"),
                          ("test", "test")):
        if stem.startswith(prefix):
            return split
    split = split_from_path(path.as_posix())
    if split is None and not opts.resplit:
        raise S2IError(f"cannot tell the split of {path} (expected data_/val_/test_batch_NNN"
                       ".bin); pass --split NAME")
    return split or ""


def _records(path: Path, record: int) -> tuple[np.ndarray, int]:
    """Whole records of a batch file as a read-only ``[n, record]`` memmap, and the spare bytes."""
    size = path.stat().st_size
    n = size // record
    if n == 0:
        return np.zeros((0, record), np.uint8), size
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, record)), size - n * record


def _parse_id(raw: bytes, n_classes: int) -> tuple[int, int, int] | None:
    """11-byte ``CCCVVVVVWWW`` id -> (class index, video number, window) or None."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if len(text) != ID_BYTES or not text.isdigit():
        return None
    k, video, window = int(text[:3]), int(text[3:8]), int(text[8:])
    if not 1 <= k <= n_classes:
        return None
    return k - 1, video, window


def _label_offset(files: list[Path], n_classes: int, opts: PrepareOptions) -> int:
    """Label bytes are class indices 0..K-1; files holding 1..K (no 0, some K) are 1-based."""
    if opts.label_base in ("0", "1"):
        return int(opts.label_base)
    seen: set[int] = set()
    for path in files:
        records, _ = _records(path, AUDIO_RECORD)
        seen.update(np.unique(records[:, 0]).tolist())
    return 1 if seen and 0 not in seen and n_classes in seen else 0


def build_from_bins(inputs: list[Path], opts: PrepareOptions) -> Path:
    """s2i_data binary batches -> a store (audio-visual batches give images too)."""
    classes = list(opts.classes or VEGAS_CLASSES)
    files = bin_files(inputs)
    formats = {path: bin_format(path, opts.bin_format) for path in files}
    if len(set(formats.values())) > 1:
        raise S2IError("the inputs mix audio-only and audio-visual batch files; build them "
                       "into separate stores")
    kind = next(iter(formats.values()))
    if opts.resplit and kind == "audio":
        raise S2IError("--resplit needs video ids, which audio-only batches do not hold")
    record = AUDIO_RECORD if kind == "audio" else AUDIO_VISUAL_RECORD
    offset = _label_offset(files, len(classes), opts) if kind == "audio" else 0
    source = {"kind": f"s2i-bin-{kind}", "record_bytes": record, "label_offset": offset,
              "inputs": [{"path": str(p.resolve()), "sha256": sha256_file(p)} for p in files]}
    with StoreWriter(opts.out, classes, official_front_end(opts), has_images=kind == "audio-visual",
                     source=source, replace=opts.overwrite) as writer:
        file_splits = {path: bin_split(path, opts) for path in files}
        plans = [_plan_bin(path, record, kind, file_splits[path], len(classes), offset, opts)
                 for path in files]
        if opts.resplit:
            videos: dict[int, list[int]] = {}
            for plan in plans:
                for label, video in zip(plan["labels"], plan["videos"], strict=True):
                    if label >= 0:
                        videos.setdefault(int(label), []).append(int(video))
            assignment = split_by_video(videos, opts.fractions, opts.seed)  # type: ignore
            for plan in plans:
                plan["splits"] = [assignment.get(int(v), "") for v in plan["videos"]]
        split_lists = [[s for s, lab in zip(plan["splits"], plan["labels"], strict=True)
                        if lab >= 0] for plan in plans]
        splits = _open_splits(writer, split_lists)
        total = sum(len(plan["labels"]) for plan in plans)
        with tqdm(total=total, desc="binary records", unit="rec",
                  disable=not opts.progress) as bar:
            for path, plan in zip(files, plans, strict=True):
                _copy_bin(path, plan, record, kind, splits, writer, bar)
        if opts.balance:
            writer.balance(opts.seed)
    return opts.out


def _plan_bin(path: Path, record: int, kind: str, split: str, n_classes: int, offset: int,
              opts: PrepareOptions) -> dict[str, list]:
    """Labels, videos, ids and split of each whole record (label -1 = skip)."""
    records, _ = _records(path, record)
    if opts.limit is not None:
        records = records[: opts.limit]
    labels: list[int] = []
    videos: list[int] = []
    ids: list[str] = []
    if kind == "audio":
        raw = records[:, 0].astype(np.int64) - offset
        labels = [int(x) if 0 <= x < n_classes else -1 for x in raw]
        videos = [-1] * len(labels)
        ids = [f"{path.stem}_r{i:05d}" for i in range(len(labels))]
    else:
        for row in np.asarray(records[:, :ID_BYTES]):
            parsed = _parse_id(row.tobytes(), n_classes)
            if parsed is None:
                labels.append(-1)
                videos.append(-1)
                ids.append("")
                continue
            k, video, window = parsed
            labels.append(k)
            videos.append(video_key(k, video))
            ids.append(segment_id(k, video, window))
    return {"labels": labels, "videos": videos, "ids": ids, "splits": [split] * len(labels)}


def _copy_bin(path: Path, plan: dict[str, list], record: int, kind: str,
              splits: dict[str, SplitWriter], writer: StoreWriter, bar: tqdm) -> None:
    records, spare = _records(path, record)
    if spare:
        writer.skip(f"wrong-sized record (file size not a multiple of {record} bytes)",
                    f"{path} (last {spare} bytes)")
    n = len(plan["labels"])
    labels = np.asarray(plan["labels"], dtype=np.int64)
    for i in np.flatnonzero(labels < 0):
        writer.skip("label out of range" if kind == "audio" else "unreadable record id",
                    f"{path} record {i}")
    split_names = np.asarray(plan["splits"])
    spec_start = 1 if kind == "audio" else ID_BYTES
    for start in range(0, n, 2048):
        stop = min(start + 2048, n)
        block = np.asarray(records[start:stop])
        for name, split in splits.items():
            rows = np.flatnonzero((labels[start:stop] >= 0) & (split_names[start:stop] == name))
            if not rows.size:
                continue
            specs = block[rows, spec_start:spec_start + SPEC_BYTES].reshape(-1, *SPEC_SHAPE)
            images = (block[rows, spec_start + SPEC_BYTES:].reshape(-1, 96, 96, 3)
                      if kind == "audio-visual" else None)
            split.append_batch(np.ascontiguousarray(specs), labels[start + rows].tolist(),
                               [plan["videos"][start + r] for r in rows],
                               [plan["ids"][start + r] for r in rows],
                               None if images is None else np.ascontiguousarray(images))
        bar.update(stop - start)
