"""What every training stage shares: devices, ranks, seeds, TensorBoard, image grids and
the stage shape (:class:`StageTrainer`, :func:`train_stage`)."""

from __future__ import annotations

import dataclasses
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from runtime.config import config_parser, dataclass_from_args
from runtime.errors import S2IError
from runtime.wire.images import save_png
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data.store import Store
from trainer.presets import preset_overrides
from trainer.run import RunFolder


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


class RunWriter:
    """TensorBoard scalars and images plus PNG files; a no-op on non-main ranks."""

    def __init__(self, run: RunFolder, enabled: bool) -> None:
        self.run = run
        self.enabled = enabled
        self.tb = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run.tensorboard))

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, step)

    def picture(self, tag: str, picture: np.ndarray, step: int, png_name: str) -> None:
        if self.tb is not None:
            self.tb.add_image(tag, picture, step, dataformats="HWC")
            save_png(self.run.sample(png_name), picture)

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


class StageTrainer:
    """The shape of a training stage: ``__init__`` builds the networks, ``resume()`` loads
    ``RUN/checkpoints/<stage>_last.pt``, ``fit()`` trains to ``cfg.epochs`` and returns the
    stage's figures; ``state()`` is the checkpoint dict. Run one with :func:`train_stage`."""

    stage = ""

    def __init__(self, cfg: Any, world: Dist) -> None:
        check_batch_split(cfg.batch_size, world)
        self.cfg, self.world = cfg, world
        self.run = RunFolder(cfg.run_dir)
        self.store = Store(cfg.store)
        self.epoch, self.step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.writer = RunWriter(self.run, False)    # train_stage opens the real one
        seed_everything(cfg.seed)                     # the networks' initial weights

    def seed_epoch(self, epoch: int) -> None:
        """Seed this epoch's random draws from (seed, epoch, rank) alone."""
        seed_epoch(self.cfg.seed, epoch, self.world.rank)

    def mean_over_ranks(self, value: float) -> float:
        return reduce_mean(value, self.world)

    def parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` as the training loop calls it: DDP-wrapped in a multi-process run."""
        if self.world.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel
            return DistributedDataParallel(model)
        return model

    def base_state(self) -> dict[str, Any]:
        """What every stage's checkpoint holds besides its networks and optimisers."""
        return {"stage": self.stage, "front_end": self.store.front_end.to_dict(),
                "classes": self.store.classes, "config": dataclasses.asdict(self.cfg),
                "epoch": self.epoch, "step": self.step, "history": self.history,
                "store": {"path": str(self.store.path), "fingerprint": self.store.fingerprint}}

    def load_last(self, **checks: Any) -> dict[str, Any]:
        """The stage's newest checkpoint, checked (``checks`` go to ``load_checkpoint``) and
        trained on this store; restores the epoch, step and history counters."""
        path = self.run.last(self.stage)
        state = load_checkpoint(path, stage=self.stage, **checks)
        check_same_store(state, path, self.store)
        self.epoch, self.step, self.history = state["epoch"], state["step"], state["history"]
        return state

    def save(self, snapshot: bool) -> None:
        """Write ``<stage>_last.pt`` and, when ``snapshot``, ``<stage>_eNNNN.pt``."""
        state = self.state()
        save_checkpoint(self.run.last(self.stage), state)
        if snapshot:
            save_checkpoint(self.run.snapshot(self.stage, self.epoch), state)

    def snapshot_due(self) -> bool:
        return self.epoch % self.cfg.snapshot_every == 0 or self.epoch == self.cfg.epochs

    def state(self) -> dict[str, Any]:
        raise NotImplementedError

    def resume(self) -> None:
        raise NotImplementedError

    def fit(self) -> Any:
        raise NotImplementedError


def train_stage(trainer_class: type[StageTrainer], cfg: Any, resume: bool = False) -> Any:
    """Set up the process group, build the stage, resume it if asked, save its config, fit;
    the writer is closed and the process group left in every case (a failing rank never
    hangs the others)."""
    world = setup_distributed(cfg.device)
    try:
        run = RunFolder(cfg.run_dir)
        run.check_ours()                        # before anything is written there
        with run.lock(world.is_main):           # one writer per run folder
            trainer = trainer_class(cfg, world)
            if resume:
                trainer.resume()
            if world.is_main:
                trainer.run.save_config(cfg, trainer.stage)
            trainer.writer = RunWriter(trainer.run, world.is_main)
            try:
                return trainer.fit()
            finally:
                trainer.writer.close()
    finally:
        teardown_distributed()


def parse_stage(argv: list[str], cls: type, stage: str, prog: str,
                description: str | None = None) -> tuple[Any, bool]:
    """A stage's config from defaults, ``--preset``, the saved config (with --resume) and the
    options, each over the one before."""
    parser = config_parser(cls, prog, description)
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN/checkpoints/<stage>_last.pt")
    args = parser.parse_args(argv)
    base: dict[str, Any] = preset_overrides(cls, args.preset)   # under the saved config
    if args.resume:
        run = RunFolder(args.run_dir or cls().run_dir)
        base.update(dataclasses.asdict(run.load_config(cls, stage)))
    cfg = dataclass_from_args(cls, args, **base)
    if not cfg.store:
        raise S2IError("--store is required: a dataset store built by `python -m trainer "
                       "prepare`")
    return cfg, args.resume
