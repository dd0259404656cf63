"""``python -m trainer sample``: translate the sounds of a split into images, with an index.

Each checkpoint's frozen encoder + generator turns every selected sound of the split into
``--samples`` images (MC dropout on, as at test time in the paper). The output folder::

    OUT/index.json                 {"format": "s2i-samples", "items": [...], ...}
    OUT/index.csv                  the same items, one row each
    OUT/images/<model>/<sound>_k<sample>.png
    OUT/real/<sound>.png           the sound's real frame (stores with images only)

An item: ``file``, ``sound_id``, ``class``, ``class_index``, ``checkpoint``, ``model``,
``epoch``, ``sample``, ``real`` (a path relative to OUT, or null). ``python -m trainer
label OUT`` labels these images; ``labels.json`` then sits beside the index.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from runtime.errors import S2IError
from runtime.frontend import check_same_front_end, from_uint8
from runtime.manifest import atomic_dir, atomic_write_json, read_json
from trainer.checkpoint import Translator, find_checkpoint, load_checkpoint, load_translator
from trainer.data.store import SplitArrays, Store

SAMPLES_FORMAT = "s2i-samples"
SAMPLES_VERSION = 1
INDEX_FIELDS = ("file", "sound_id", "class", "class_index", "checkpoint", "model", "epoch",
                "sample", "real")
SNAPSHOT_RE = re.compile(r"^gan_e(\d+)\.pt$")


def list_snapshots(run: str | Path) -> list[Path]:
    """Every GAN checkpoint of a run, by epoch: ``gan_eNNNN.pt`` plus ``gan_last.pt`` when
    its epoch has no snapshot of its own. A file argument is returned alone."""
    run = Path(run)
    if run.is_file():
        return [run]
    folder = run / "checkpoints"
    if not folder.is_dir():
        raise S2IError(f"{run} is not a run folder (no checkpoints/ inside); expected the "
                       "--out folder of `python -m trainer gan`")
    snapshots = sorted((int(m.group(1)), p) for p in folder.iterdir()
                       if (m := SNAPSHOT_RE.match(p.name)))
    paths = [p for _, p in snapshots]
    last = folder / "gan_last.pt"
    if last.is_file():
        epoch = int(load_checkpoint(last, stage="gan").get("epoch", -1))
        if epoch not in {e for e, _ in snapshots}:
            paths.append(last)
    if not paths:
        raise S2IError(f"run {run} has no GAN checkpoints (expected checkpoints/gan_e*.pt or "
                       "gan_last.pt)")
    return paths


def resolve_checkpoints(paths: list[str | Path], snapshots: str = "last") -> list[Path]:
    """Checkpoint files from files and run folders. For a run: ``last`` (its newest),
    ``all`` (every snapshot) or an integer N (N snapshots spread evenly, newest included)."""
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_file():
            files.append(path)
        elif snapshots == "last":
            files.append(find_checkpoint(path, "gan"))
        else:
            every = list_snapshots(path)
            if snapshots != "all":
                try:
                    n = int(snapshots)
                except ValueError:
                    raise S2IError(f"--snapshots must be 'last', 'all' or a number, got "
                                   f"{snapshots!r}") from None
                if n < 1:
                    raise S2IError(f"--snapshots must be at least 1, got {n}")
                picks = np.unique(np.linspace(len(every) - 1, 0, n).round().astype(int))
                every = [every[i] for i in sorted(picks)]
            files.extend(every)
    return files


def check_compatible(translator: Translator, store: Store) -> None:
    check_same_front_end(store.front_end, translator.state["front_end"],
                         f"checkpoint {translator.path}")
    if translator.classes and translator.classes != store.classes:
        raise S2IError(f"checkpoint {translator.path} was trained on classes "
                       f"{translator.classes}, store {store.path} has {store.classes}")


def select_items(split: SplitArrays, per_class: int | None, limit: int | None,
                 seed: int) -> np.ndarray:
    """Indices of the sounds to translate: all, or ``per_class`` drawn evenly, then ``limit``."""
    indices = np.arange(len(split))
    if per_class is not None:
        rng = np.random.default_rng(seed)
        picked = []
        for k in np.unique(split.labels):
            members = indices[split.labels == k]
            picked.append(np.sort(rng.permutation(members)[:per_class]))
        indices = np.sort(np.concatenate(picked))
    if limit is not None:
        indices = indices[:limit]
    if indices.size == 0:
        raise S2IError(f"no sounds selected from split '{split.name}'")
    return indices


@torch.no_grad()
def translate(translator: Translator, spectrograms_u8: np.ndarray, samples: int = 1,
              seed: int = 0, batch_size: int = 64, mc_dropout: bool = True,
              progress: bool = False) -> np.ndarray:
    """uint8 spectrograms ``[N, 128, 100]`` -> uint8 images ``[N, samples, 96, 96, 3]``.

    MC dropout masks are drawn from a generator seeded with ``seed``, so a call is
    reproducible; ``mc_dropout=False`` gives the one deterministic image per sound.
    """
    gen = torch.Generator().manual_seed(int(seed))
    n = len(spectrograms_u8)
    out = np.empty((n, samples, 96, 96, 3), dtype=np.uint8)
    bar = tqdm(total=n * samples, desc=f"translate e{translator.epoch}", unit="img",
               disable=not progress, leave=False)
    for start in range(0, n, batch_size):
        chunk = np.asarray(spectrograms_u8[start:start + batch_size])
        spec = torch.from_numpy(from_uint8(chunk))[:, None]
        z = translator.encoder(spec)
        for k in range(samples):
            masks = (translator.generator.draw_masks(len(z), generator=gen) if mc_dropout
                     else translator.generator.ones_masks(len(z)))
            images = translator.generator(z, masks)
            out[start:start + len(z), k] = to_image_u8(images)
            bar.update(len(z))
    bar.close()
    return out


def to_image_u8(images: torch.Tensor) -> np.ndarray:
    """``[B, 3, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]``."""
    x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def png_bytes(image_u8: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image_u8).save(buffer, format="PNG")
    return buffer.getvalue()


def write_samples(checkpoints: list[str | Path], store_path: str | Path, out: str | Path,
                  split: str = "test", samples: int = 1, per_class: int | None = None,
                  limit: int | None = None, seed: int = 0, batch_size: int = 64,
                  mc_dropout: bool = True, overwrite: bool = False, snapshots: str = "last",
                  progress: bool = True) -> dict[str, Any]:
    """Translate a split with every checkpoint and write OUT (see the module docstring)."""
    if samples < 1:
        raise S2IError(f"--samples must be at least 1, got {samples}")
    out = Path(out)
    if out.exists():
        if (out / "labels.json").exists():
            raise S2IError(f"{out} holds labels.json (labels a person gave); refusing to "
                           "replace it: choose another --out")
        nonempty = not out.is_dir() or any(out.iterdir())
        if nonempty and not overwrite:
            raise S2IError(f"{out} already exists; pass --overwrite to replace it")
    store = Store(store_path)
    arrays = store.split(split)
    chosen = select_items(arrays, per_class, limit, seed)
    paths = resolve_checkpoints(checkpoints, snapshots)
    if not paths:
        raise S2IError("no checkpoint given; expected RUN folders or checkpoint files")
    items: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    with atomic_dir(out, replace=True) as tmp:
        real_paths: dict[int, str] = {}
        if arrays.images is not None:
            for i in chosen:
                rel = f"real/{arrays.ids[i]}.png"
                (tmp / "real").mkdir(exist_ok=True)
                (tmp / rel).write_bytes(png_bytes(np.asarray(arrays.images[i])))
                real_paths[int(i)] = rel
        for m, path in enumerate(tqdm(paths, desc="checkpoints", unit="ckpt",
                                      disable=not progress or len(paths) < 2)):
            translator = load_translator(path)
            check_compatible(translator, store)
            tag = f"m{m}_e{translator.epoch:04d}"
            models.append({"model": tag, "checkpoint": str(translator.path),
                           "epoch": translator.epoch, "embedding_dim": translator.embedding_dim,
                           "width": float(translator.state.get("width", 1.0))})
            images = translate(translator, arrays.spectrograms[chosen], samples,
                               seed=seed + m, batch_size=batch_size, mc_dropout=mc_dropout,
                               progress=progress)
            (tmp / "images" / tag).mkdir(parents=True)
            for row, i in enumerate(chosen):
                for k in range(samples):
                    rel = f"images/{tag}/{arrays.ids[i]}_k{k}.png"
                    (tmp / rel).write_bytes(png_bytes(images[row, k]))
                    label = int(arrays.labels[i])
                    items.append({"file": rel, "sound_id": arrays.ids[i],
                                  "class": store.classes[label], "class_index": label,
                                  "checkpoint": str(translator.path), "model": tag,
                                  "epoch": translator.epoch, "sample": k,
                                  "real": real_paths.get(int(i))})
        index = {"format": SAMPLES_FORMAT, "version": SAMPLES_VERSION,
                 "store": str(store.path), "store_fingerprint": store.fingerprint,
                 "split": split, "classes": store.classes, "samples": samples,
                 "mc_dropout": mc_dropout, "seed": seed, "models": models, "items": items}
        atomic_write_json(tmp / "index.json", index)
        with open(tmp / "index.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=INDEX_FIELDS)
            writer.writeheader()
            for item in items:
                writer.writerow({k: "" if item[k] is None else item[k] for k in INDEX_FIELDS})
    return index


def read_index(folder: str | Path) -> dict[str, Any]:
    """Read and check ``folder/index.json`` written by :func:`write_samples`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise S2IError(f"samples folder not found: {folder} (write one with "
                       "`python -m trainer sample RUN --store S --out DIR`)")
    index = read_json(folder / "index.json", "samples index")
    if index.get("format") != SAMPLES_FORMAT or not isinstance(index.get("items"), list):
        raise S2IError(f"{folder}/index.json is not an S2I samples index (expected the "
                       "output of `python -m trainer sample`)")
    if index.get("version") != SAMPLES_VERSION:
        raise S2IError(f"{folder}/index.json has version {index.get('version')}, expected "
                       f"{SAMPLES_VERSION}")
    return index


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer sample",
                                description="Translate the sounds of a split into images.")
    p.add_argument("checkpoints", nargs="+", help="GAN checkpoint files or run folders")
    p.add_argument("--snapshots", default="last", help="for run folders: 'last' (gan_last.pt), "
                   "'all' (every gan_e*.pt snapshot) or N (N snapshots spread over the run)")
    p.add_argument("--store", required=True, help="dataset store folder")
    p.add_argument("--split", default="test", help="split to translate (default: test)")
    p.add_argument("--samples", type=int, default=1, help="MC-dropout images per sound")
    p.add_argument("--per-class", type=int, default=None, help="sounds per class (random, "
                   "seeded); default all")
    p.add_argument("--limit", type=int, default=None, help="at most this many sounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--no-mc-dropout", action="store_true", help="deterministic generator "
                   "(dropout off); the paper keeps it on")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out "
                   "(never one holding labels.json)")
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    index = write_samples(args.checkpoints, args.store, args.out, split=args.split,
                          samples=args.samples, per_class=args.per_class, limit=args.limit,
                          seed=args.seed, batch_size=args.batch_size,
                          mc_dropout=not args.no_mc_dropout, overwrite=args.overwrite,
                          snapshots=args.snapshots)
    n_real = sum(1 for it in index["items"] if it["real"])
    print(f"wrote {len(index['items'])} images from {len(index['models'])} checkpoint(s) to "
          f"{args.out} ({'with' if n_real else 'without'} real frames); label them with "
          f"`python -m trainer label {args.out}`")
    return 0
