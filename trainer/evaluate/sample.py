"""``python -m trainer sample``: translate the sounds of a split into images, with an index.

Each checkpoint's frozen encoder + generator turns every selected sound of the split into
``--samples`` images (MC dropout on, as at test time in the paper). The output folder::

    OUT/index.json                 {"format": "s2i-samples", "items": [...], ...}
    OUT/index.csv                  the same items, one row each
    OUT/images/<model>/<sound>_k<sample>.png
    OUT/real/<sound>.png           the sound's real frame (stores with images only)
    OUT/config_sample.json         the settings used (``SampleConfig``)

An item: ``file``, ``sound_id``, ``class``, ``class_index``, ``checkpoint``, ``model``,
``epoch``, ``sample``, ``real`` (a path relative to OUT, or null). ``python -m trainer
label OUT`` labels these images; ``labels.json`` then sits beside the index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from runtime.artifacts import atomic_dir, check_replaceable
from runtime.config import parse_config, save_config
from runtime.errors import S2IError
from runtime.frontend import check_same_front_end, from_uint8
from runtime.wire.images import png_bytes
from trainer.checkpoint import Translator, load_checkpoint, load_translator
from trainer.data.store import SplitArrays, Store
from trainer.evaluate.sample_files import SAMPLES_FORMAT, SAMPLES_VERSION, write_index
from trainer.images import to_uint8_images
from trainer.run import RunFolder, find_checkpoint


def list_snapshots(run: str | Path) -> list[Path]:
    """Every GAN checkpoint of a run, by epoch: ``gan_eNNNN.pt`` plus ``gan_last.pt`` when
    its epoch has no snapshot of its own. A file argument is returned alone."""
    if Path(run).is_file():
        return [Path(run)]
    folder = RunFolder(run)
    if not folder.checkpoints.is_dir():
        raise S2IError(f"{folder.path} is not a run folder (no checkpoints/ inside); expected "
                       "the --out folder of `python -m trainer gan`")
    snapshots = folder.snapshots("gan")
    paths = [p for _, p in snapshots]
    last = folder.last("gan")
    if last.is_file():
        epoch = int(load_checkpoint(last, stage="gan").get("epoch", -1))
        if epoch not in {e for e, _ in snapshots}:
            paths.append(last)
    if not paths:
        raise S2IError(f"run {folder.path} has no GAN checkpoints (expected checkpoints/gan_e*.pt"
                       " or gan_last.pt)")
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
            out[start:start + len(z), k] = to_uint8_images(images)
            bar.update(len(z))
    bar.close()
    return out


@dataclass
class SampleConfig:
    """What ``python -m trainer sample`` is told (saved as ``OUT/config_sample.json``)."""

    checkpoints: list[str] = field(metadata={
        "positional": True, "help": "GAN checkpoint files or run folders"})
    store: str = field(metadata={"help": "dataset store folder"})
    out: str = field(metadata={"help": "output folder"})
    snapshots: str = field(default="last", metadata={
        "help": "for run folders: 'last' (gan_last.pt), 'all' (every gan_e*.pt snapshot) or "
                "N (N snapshots spread over the run)"})
    split: str = field(default="test", metadata={"help": "split to translate"})
    samples: int = field(default=1, metadata={"help": "MC-dropout images per sound"})
    per_class: int | None = field(default=None, metadata={
        "help": "sounds per class (random, seeded); default all"})
    limit: int | None = field(default=None, metadata={"help": "at most this many sounds"})
    seed: int = 0
    batch_size: int = 64
    mc_dropout: bool = field(default=True, metadata={
        "help": "MC dropout on (the paper); --no-mc-dropout: one deterministic image"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing --out (never one holding labels.json)"})
    progress: bool = field(default=True, metadata={"cli": False})

    def __post_init__(self) -> None:
        self.checkpoints = [str(c) for c in self.checkpoints]
        self.store, self.out = str(self.store), str(self.out)
        if self.samples < 1:
            raise S2IError(f"--samples must be at least 1, got {self.samples}")


def write_samples(cfg: SampleConfig) -> dict[str, Any]:
    """Translate a split with every checkpoint and write OUT (see the module docstring)."""
    out, split, samples, seed = Path(cfg.out), cfg.split, cfg.samples, cfg.seed
    check_replaceable(out, "samples folder", never={"labels.json": "labels a person gave"},
                      overwrite=cfg.overwrite)
    store = Store(cfg.store)
    arrays = store.split(split)
    chosen = select_items(arrays, cfg.per_class, cfg.limit, seed)
    paths = resolve_checkpoints(list(cfg.checkpoints), cfg.snapshots)
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
                                      disable=not cfg.progress or len(paths) < 2)):
            translator = load_translator(path)
            check_compatible(translator, store)
            tag = f"m{m}_e{translator.epoch:04d}"
            models.append({"model": tag, "checkpoint": str(translator.path),
                           "epoch": translator.epoch, "embedding_dim": translator.embedding_dim,
                           "width": float(translator.state.get("width", 1.0))})
            images = translate(translator, arrays.spectrograms[chosen], samples,
                               seed=seed + m, batch_size=cfg.batch_size,
                               mc_dropout=cfg.mc_dropout, progress=cfg.progress)
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
                 "mc_dropout": cfg.mc_dropout, "seed": seed, "models": models, "items": items}
        write_index(tmp, index)
        save_config(cfg, tmp / "config_sample.json")
    return index


def main(argv: list[str]) -> int:
    cfg = parse_config(SampleConfig, argv, "python -m trainer sample",
                       "Translate the sounds of a split into images.")
    index = write_samples(cfg)
    n_real = sum(1 for it in index["items"] if it["real"])
    print(f"wrote {len(index['items'])} images from {len(index['models'])} checkpoint(s) to "
          f"{cfg.out} ({'with' if n_real else 'without'} real frames); label them with "
          f"`python -m trainer label {cfg.out}`")
    return 0
