"""What every training stage shares: devices, ranks, seeds and RNG state, run folders,
TensorBoard, image grids and the stage's checkpoint state."""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from runtime.errors import S2IError
from runtime.manifest import atomic_write_bytes


@dataclass
class Dist:
    """This process's place in a (possibly single-process) data-parallel run."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Single process, or torchrun's env:// rendezvous (gloo on CPU, nccl on CUDA).

    ``device`` is ``cpu``, ``cuda`` or ``cuda:N``; under torchrun each process takes the GPU
    of its ``LOCAL_RANK``.
    """
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise S2IError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got '{device}'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise S2IError(f"--device {device} was asked for, but PyTorch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise S2IError(f"--device {device}: PyTorch sees only {torch.cuda.device_count()} GPU(s)")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist(device=dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dev.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), device=dev)


def check_batch_split(batch_size: int, world: Dist) -> None:
    """Each of the ``world_size`` processes takes an equal share of every global batch."""
    if batch_size % world.world_size:
        raise S2IError(f"--batch-size {batch_size} does not split evenly over "
                       f"{world.world_size} processes; use a multiple of {world.world_size}")


def check_positive(cfg: Any, *names: str) -> None:
    """``ValueError`` (a one-line CLI error) unless each named config field is > 0."""
    for name in names:
        value = getattr(cfg, name)
        if value is not None and not value > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {value}")


def check_same_store(state: dict[str, Any], path: Path, store: Any) -> None:
    """A checkpoint resumes only on the data it was trained with."""
    trained_on = (state.get("store") or {}).get("fingerprint")
    if trained_on and trained_on != store.fingerprint:
        raise S2IError(f"{path} was trained on another store (fingerprint {trained_on}) than "
                       f"{store.path} ({store.fingerprint}); resume on the same data")


def teardown_distributed() -> None:
    """Leave the process group; on success only once every rank is done (rank 0 writes last,
    and gloo aborts a rank whose peer left early). Called from ``finally`` blocks: while an
    exception propagates there is no barrier, so a failing rank never hangs the others."""
    if dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int) -> None:
    """Seed the random draws of one epoch (dropout) from (seed, epoch, rank) alone.

    Each process of a data-parallel run draws its own dropout masks, as a single process does
    for each sample; and a run resumed at any epoch draws exactly what an uninterrupted run
    draws, whatever happened in between (pictures, evaluation).
    """
    seed_everything(int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0]))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def to_uint8_image(batch: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]``."""
    x = ((batch.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    x = x.permute(0, 2, 3, 1).numpy()
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


def image_grid(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Rows of image batches -> one uint8 picture, white gaps between images."""
    pictures = [to_uint8_image(r) for r in rows]
    h, w = pictures[0].shape[1:3]
    cols = max(p.shape[0] for p in pictures)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, pics in enumerate(pictures):
        for c, pic in enumerate(pics):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y:y + h, x:x + w] = pic
    return grid


def save_png(path: Path, picture: np.ndarray) -> None:
    import io
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


class RunWriter:
    """TensorBoard scalars and images plus PNG files; a no-op on non-main ranks."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def picture(self, tag: str, picture: np.ndarray, step: int, png_name: str) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, picture, step, dataformats="HWC")
            save_png(self.run_dir / "samples" / png_name, picture)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def reduce_mean(value: float, world: Dist) -> float:
    """The mean of a per-rank number across ranks (itself in a single process)."""
    if world.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=world.device)
    dist.all_reduce(t)
    return float(t.item()) / world.world_size


def update_metrics(run_dir: Path, section: str, values: dict[str, Any]) -> None:
    """Merge one stage's figures into ``RUN/metrics.json`` (atomically)."""
    import json

    from runtime.manifest import atomic_write_json
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    metrics[section] = values
    atomic_write_json(path, metrics)
