"""Stage 1: the audio autoencoder (``python -m trainer audio --store S --run R``).

MSE reconstruction of 1-s log-mel spectrograms, SGD lr 0.05 momentum 0.9, batch 64 (the
paper's optimiser settings). The defaults are sized for a quick run (100 epochs);
``--preset paper`` sets every value the paper or the authors' code states (1000 epochs, ...;
docs/FIDELITY.md). Reports validation reconstruction MSE every epoch and,
at the end, a linear probe of the embeddings (how well they separate the classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime.cli import log
from runtime.frontend import check_same_front_end
from trainer.data.batches import count_batches, epoch_batches, open_split
from trainer.data.store import Store
from trainer.images import image_grid
from trainer.models import (
    AudioAutoencoder,
    check_embedding_dim,
    check_width,
    upgrade_decoder_state,
)
from trainer.presets import preset_overrides
from trainer.train.common import Dist, StageTrainer, check_positive, parse_stage, train_stage
from trainer.train.probe import linear_probe_accuracy

PRESET_HELP = "named values applied under the other options: 'paper' (docs/FIDELITY.md)"


@dataclass
class AudioConfig:
    store: str = ""
    preset: str = field(default="", metadata={"help": PRESET_HELP})
    run_dir: str = "runs/audio"
    embedding_dim: int = 512
    width: float = 1.0
    epochs: int = 100
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    device: str = "cpu"
    max_batches: int | None = None      # cap on batches per epoch (short runs)
    val_max_batches: int | None = 20    # validation batches per epoch (a fixed random subset)
    snapshot_every: int = 10
    probe_samples: int = 2000

    def __post_init__(self) -> None:
        preset_overrides(AudioConfig, self.preset)
        check_embedding_dim(self.embedding_dim)
        check_positive(self, "epochs", "batch_size", "snapshot_every", "probe_samples", "width",
                       "lr")
        check_width(self.width)


def embed(encoder: torch.nn.Module, store: Store, split: str, limit: int,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings and labels of up to ``limit`` items of a split (evenly spread)."""
    arrays = open_split(store, split)
    step = max(1, len(arrays) // limit)
    zs, ys = [], []
    encoder.eval()
    with torch.no_grad():   # a fixed shuffle: stores are often sorted by class
        for batch in epoch_batches(arrays, 256, 0, 0, device=device):
            keep = batch.indices % step == 0
            if keep.any():
                zs.append(encoder(batch.spectrograms[torch.from_numpy(keep)]).cpu())
                ys.append(batch.labels[torch.from_numpy(keep)].cpu())
    return torch.cat(zs)[:limit], torch.cat(ys)[:limit]


def validate(model: AudioAutoencoder, store: Store, cfg: AudioConfig, world: Dist) -> float:
    split = open_split(store, "val" if "val" in store.splits else "train")
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        # the same random subset every epoch (stores are often sorted by class)
        for batch in epoch_batches(split, cfg.batch_size, 0, cfg.seed,
                                   max_batches=cfg.val_max_batches, device=world.device):
            recon, _ = model(batch.spectrograms)
            total += float(F.mse_loss(recon, batch.spectrograms)) * len(batch.labels)
            n += len(batch.labels)
    return total / max(n, 1)


class AudioTrainer(StageTrainer):
    """Holds the autoencoder, its optimiser and the history of one audio run."""

    stage = "audio"

    def __init__(self, cfg: AudioConfig, world: Dist) -> None:
        super().__init__(cfg, world)
        self.train = open_split(self.store, "train")
        self.model = AudioAutoencoder(cfg.embedding_dim, cfg.width).to(world.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        self.net = self.parallel(self.model)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        model = self.model
        return {**self.base_state(), "embedding_dim": self.cfg.embedding_dim,
                "width": self.cfg.width,
                "models": {"autoencoder": model.state_dict(),
                           "encoder": model.encoder.state_dict(),
                           "decoder": model.decoder.state_dict()},
                "optimizers": {"autoencoder": self.opt.state_dict()}}

    def resume(self) -> None:
        state = self.load_last(embedding_dim=self.cfg.embedding_dim, width=self.cfg.width)
        check_same_front_end(state["front_end"], self.store.front_end,
                             f"store {self.store.path}")
        weights, optimizer = state["models"]["autoencoder"], state["optimizers"]["autoencoder"]
        for key in upgrade_decoder_state(weights, "decoder."):
            # the SGD momentum of the converted kernel gets the same zero column
            index = [name for name, _ in self.model.named_parameters()].index(key)
            buffer = optimizer.get("state", {}).get(index, {})
            if buffer.get("momentum_buffer") is not None:
                buffer["momentum_buffer"] = F.pad(buffer["momentum_buffer"], (0, 1))
            log(f"{self.run.last(self.stage)}: converted the earlier audio decoder's convT12 "
                "kernel (5,3) + output padding to the authors' (5,4) (exact: outputs unchanged)")
        self.model.load_state_dict(weights)
        self.opt.load_state_dict(optimizer)

    # -- one epoch -----------------------------------------------------------------------
    def train_epoch(self) -> dict[str, Any]:
        cfg, world = self.cfg, self.world
        epoch = self.epoch               # 0-based here: the seeds of the epoch's draws
        self.seed_epoch(epoch)
        self.net.train()
        n_batches = count_batches(self.train, cfg.batch_size, cfg.max_batches)
        bar = tqdm(total=n_batches, desc=f"audio epoch {epoch + 1}/{cfg.epochs}",
                   disable=not world.is_main, leave=False)
        running = 0.0
        for batch in epoch_batches(self.train, cfg.batch_size, epoch, cfg.seed,
                                   rank=world.rank, world_size=world.world_size,
                                   max_batches=cfg.max_batches, device=world.device):
            recon, _ = self.net(batch.spectrograms)
            loss = F.mse_loss(recon, batch.spectrograms)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            running += loss.item()
            self.writer.scalars({"audio/train_mse": loss.item()}, self.step)
            bar.set_postfix(mse=f"{loss.item():.4f}")
            bar.update()
        bar.close()
        self.epoch = epoch + 1
        train_mse = self.mean_over_ranks(running / n_batches)
        val_mse = validate(self.model, self.store, cfg, world)
        return {"epoch": self.epoch, "train_mse": train_mse, "val_mse": val_mse}

    # -- pictures ------------------------------------------------------------------------
    def sample_grids(self) -> None:
        sample = next(epoch_batches(self.train, 8, 0, self.cfg.seed, device=self.world.device))
        with torch.no_grad():
            recon, _ = self.model(sample.spectrograms)
        self.writer.picture("audio/input_vs_reconstruction",
                            image_grid([sample.spectrograms, recon]), self.epoch,
                            f"audio_e{self.epoch:04d}.png")

    def probe(self) -> dict[str, Any]:
        """The last validation MSE and a linear probe of the embeddings (main rank)."""
        store, device = self.store, self.world.device
        metrics: dict[str, Any] = {
            "val_mse": self.history[-1]["val_mse"] if self.history else None}
        probe_split = "val" if "val" in store.splits else "train"
        encoder = self.model.encoder
        tx, ty = embed(encoder, store, "train", self.cfg.probe_samples, device)
        vx, vy = embed(encoder, store, probe_split, self.cfg.probe_samples, device)
        metrics["linear_probe_accuracy"] = linear_probe_accuracy(tx, ty, vx, vy,
                                                                 len(store.classes))
        metrics["chance"] = 1.0 / len(store.classes)
        print(f"audio: val reconstruction mse {metrics['val_mse']:.4f}, linear probe accuracy "
              f"{metrics['linear_probe_accuracy']:.1%} on {probe_split} "
              f"(chance {metrics['chance']:.0%})", flush=True)
        return metrics

    def fit(self) -> dict[str, Any]:
        cfg, world = self.cfg, self.world
        while self.epoch < cfg.epochs:
            record = self.train_epoch()
            self.history.append(record)
            self.writer.scalars({"audio/epoch_train_mse": record["train_mse"],
                                 "audio/val_mse": record["val_mse"]}, self.epoch)
            if world.is_main:
                print(f"audio epoch {self.epoch}/{cfg.epochs}: train mse "
                      f"{record['train_mse']:.4f}, val mse {record['val_mse']:.4f}", flush=True)
                self.sample_grids()
                self.save(snapshot=self.snapshot_due())
        metrics: dict[str, Any] = {"epochs": cfg.epochs, "preset": cfg.preset or None,
                                   "history": self.history}
        if world.is_main:
            metrics.update(self.probe())
            self.run.update_metrics("audio", metrics)
        return metrics


def train_audio(cfg: AudioConfig, resume: bool = False) -> dict[str, Any]:
    return train_stage(AudioTrainer, cfg, resume)


def main(argv: list[str]) -> int:
    cfg, resume = parse_stage(argv, AudioConfig, "audio", "python -m trainer audio", __doc__)
    train_audio(cfg, resume)
    return 0
