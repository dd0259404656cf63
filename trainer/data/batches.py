"""Batches from a store split: deterministic order per (seed, epoch), sharded across ranks.

The order of an epoch depends only on the seed and the epoch number, so a run resumed from
an end-of-epoch checkpoint sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from runtime.errors import S2IError
from runtime.frontend import from_uint8
from trainer.data.store import SplitArrays, Store
from trainer.images import from_uint8_images


@dataclass
class Batch:
    spectrograms: torch.Tensor        # float32 [B, 1, 128, 100] in [-1, 1]
    labels: torch.Tensor              # int64 [B]
    images: torch.Tensor | None       # float32 [B, 3, 96, 96] in [-1, 1]
    indices: np.ndarray               # positions in the split


def open_split(store: Store, name: str, need_images: bool = False) -> SplitArrays:
    """A split that exists, is not empty and has images when the stage needs them."""
    if name not in store.splits:
        raise S2IError(f"store {store.path} has no '{name}' split (it has {store.splits})")
    split = store.split(name)
    if len(split) == 0:
        raise S2IError(f"the '{name}' split of store {store.path} is empty")
    if need_images and split.images is None:
        raise S2IError(f"store {store.path} has no images; the GAN stage needs an audio-visual "
                       "store (videos or the demo set), not spectrograms alone")
    return split


def load_batch(split: SplitArrays, indices: np.ndarray, with_images: bool,
               device: torch.device | str = "cpu") -> Batch:
    order = np.sort(indices)  # sorted reads are kinder to memory maps
    spec = torch.from_numpy(from_uint8(split.spectrograms[order]))[:, None]
    labels = torch.from_numpy(np.asarray(split.labels[order], dtype=np.int64))
    images = None
    if with_images and split.images is not None:
        images = from_uint8_images(split.images[order]).contiguous().to(device)
    return Batch(spec.to(device), labels.to(device), images, order)


def epoch_batches(split: SplitArrays, batch_size: int, epoch: int, seed: int,
                  with_images: bool = False, rank: int = 0, world_size: int = 1,
                  shuffle: bool = True, max_batches: int | None = None,
                  device: torch.device | str = "cpu") -> Iterator[Batch]:
    """The batches of one epoch for this rank; ``batch_size`` is the global batch size."""
    n = len(split)
    if shuffle:
        order = np.random.default_rng([seed, epoch]).permutation(n)
    else:
        order = np.arange(n)
    per_rank = max(1, batch_size // world_size)
    n_batches = max(1, n // batch_size) if n >= batch_size else 1
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    for b in range(n_batches):
        chunk = order[b * batch_size:(b + 1) * batch_size]
        mine = chunk[rank * per_rank:(rank + 1) * per_rank]
        if len(mine) == 0:
            mine = chunk[:1]
        yield load_batch(split, mine, with_images, device)


def count_batches(split: SplitArrays, batch_size: int, max_batches: int | None) -> int:
    n = len(split)
    n_batches = max(1, n // batch_size) if n >= batch_size else 1
    return n_batches if max_batches is None else min(n_batches, max_batches)
