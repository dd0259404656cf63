"""Stage 1: the audio autoencoder (``python -m trainer audio --store S --run R``).

MSE reconstruction of 1-s log-mel spectrograms, SGD lr 0.05 momentum 0.9, batch 64 (the
paper's optimiser settings). The defaults are sized for a quick run (100 epochs);
``--preset paper`` sets every value the paper or the authors' code states (1000 epochs, ...;
docs/FIDELITY.md). Reports validation reconstruction MSE every epoch and,
at the end, a linear probe of the embeddings (how well they separate the classes).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from runtime.config import add_dataclass_args, config_from_dict, dataclass_from_args, save_config
from runtime.errors import S2IError
from runtime.frontend import check_same_front_end
from trainer.checkpoint import load_checkpoint, save_checkpoint
from trainer.data.batches import count_batches, epoch_batches, open_split
from trainer.data.store import Store
from trainer.models import AudioAutoencoder, check_embedding_dim
from trainer.presets import preset_overrides
from trainer.run_lock import lock_run
from trainer.train.common import (
    Dist,
    RunWriter,
    check_batch_split,
    check_positive,
    check_same_store,
    image_grid,
    reduce_mean,
    seed_epoch,
    seed_everything,
    setup_distributed,
    teardown_distributed,
    unwrap,
    update_metrics,
)
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


def train_audio(cfg: AudioConfig, resume: bool = False) -> dict[str, Any]:
    world = setup_distributed(cfg.device)
    with lock_run(cfg.run_dir, world.is_main):   # one writer per run folder
        return _train_audio(cfg, resume, world)


def _train_audio(cfg: AudioConfig, resume: bool, world: Dist) -> dict[str, Any]:
    check_batch_split(cfg.batch_size, world)
    run_dir = Path(cfg.run_dir)
    store = Store(cfg.store)
    train = open_split(store, "train")
    seed_everything(cfg.seed)
    model = AudioAutoencoder(cfg.embedding_dim, cfg.width).to(world.device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    start_epoch, step, history = 0, 0, []
    last = run_dir / "checkpoints" / "audio_last.pt"
    if resume:
        state = load_checkpoint(last, stage="audio", embedding_dim=cfg.embedding_dim,
                                width=cfg.width)
        check_same_front_end(state["front_end"], store.front_end, f"store {store.path}")
        check_same_store(state, last, store)
        model.load_state_dict(state["models"]["autoencoder"])
        opt.load_state_dict(state["optimizers"]["autoencoder"])
        start_epoch, step, history = state["epoch"], state["step"], state["history"]
    net: torch.nn.Module = model
    if world.world_size > 1:
        net = DistributedDataParallel(model)
    writer = RunWriter(run_dir, world.is_main)
    if world.is_main:
        save_config(cfg, run_dir / "config_audio.json")
    n_batches = count_batches(train, cfg.batch_size, cfg.max_batches)
    for epoch in range(start_epoch, cfg.epochs):
        seed_epoch(cfg.seed, epoch, world.rank)
        net.train()
        bar = tqdm(total=n_batches, desc=f"audio epoch {epoch + 1}/{cfg.epochs}",
                   disable=not world.is_main, leave=False)
        running = 0.0
        for batch in epoch_batches(train, cfg.batch_size, epoch, cfg.seed, rank=world.rank,
                                   world_size=world.world_size, max_batches=cfg.max_batches,
                                   device=world.device):
            recon, _ = net(batch.spectrograms)
            loss = F.mse_loss(recon, batch.spectrograms)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += loss.item()
            writer.scalars({"audio/train_mse": loss.item()}, step)
            bar.set_postfix(mse=f"{loss.item():.4f}")
            bar.update()
        bar.close()
        train_mse = reduce_mean(running / n_batches, world)
        val_mse = validate(model, store, cfg, world)
        history.append({"epoch": epoch + 1, "train_mse": train_mse, "val_mse": val_mse})
        writer.scalars({"audio/epoch_train_mse": train_mse, "audio/val_mse": val_mse}, epoch + 1)
        if world.is_main:
            print(f"audio epoch {epoch + 1}/{cfg.epochs}: train mse {train_mse:.4f}, "
                  f"val mse {val_mse:.4f}", flush=True)
            sample = next(epoch_batches(train, 8, 0, cfg.seed, device=world.device))
            with torch.no_grad():
                recon, _ = model(sample.spectrograms)
            writer.picture("audio/input_vs_reconstruction",
                           image_grid([sample.spectrograms, recon]), epoch + 1,
                           f"audio_e{epoch + 1:04d}.png")
            state = {"stage": "audio", "embedding_dim": cfg.embedding_dim, "width": cfg.width,
                     "front_end": store.front_end.to_dict(), "classes": store.classes,
                     "config": dataclasses.asdict(cfg), "epoch": epoch + 1, "step": step,
                     "models": {"autoencoder": model.state_dict(),
                                "encoder": model.encoder.state_dict(),
                                "decoder": model.decoder.state_dict()},
                     "optimizers": {"autoencoder": opt.state_dict()},
                     "history": history,
                     "store": {"path": str(store.path), "fingerprint": store.fingerprint}}
            save_checkpoint(last, state)
            if (epoch + 1) % cfg.snapshot_every == 0 or epoch + 1 == cfg.epochs:
                save_checkpoint(run_dir / "checkpoints" / f"audio_e{epoch + 1:04d}.pt", state)
    metrics: dict[str, Any] = {"epochs": cfg.epochs, "preset": cfg.preset or None,
                               "history": history}
    if world.is_main:
        metrics["val_mse"] = history[-1]["val_mse"] if history else None
        probe_split = "val" if "val" in store.splits else "train"
        tx, ty = embed(unwrap(net).encoder, store, "train", cfg.probe_samples, world.device)
        vx, vy = embed(unwrap(net).encoder, store, probe_split, cfg.probe_samples, world.device)
        metrics["linear_probe_accuracy"] = linear_probe_accuracy(tx, ty, vx, vy,
                                                                 len(store.classes))
        metrics["chance"] = 1.0 / len(store.classes)
        print(f"audio: val reconstruction mse {metrics['val_mse']:.4f}, linear probe accuracy "
              f"{metrics['linear_probe_accuracy']:.1%} on {probe_split} "
              f"(chance {metrics['chance']:.0%})", flush=True)
        update_metrics(run_dir, "audio", metrics)
    writer.close()
    teardown_distributed()
    return metrics


def parse(argv: list[str], cls: type, stage: str, prog: str) -> tuple[Any, bool]:
    """A stage's config from defaults, ``--preset``, the saved config (with --resume) and the
    options, each over the one before."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    add_dataclass_args(parser, cls)
    parser.add_argument("--resume", action="store_true",
                        help="continue from RUN/checkpoints/<stage>_last.pt")
    args = parser.parse_args(argv)
    base: dict[str, Any] = preset_overrides(cls, args.preset)
    if args.resume:
        run = Path(args.run_dir or cls().run_dir)
        saved = run / f"config_{stage}.json"
        if not saved.is_file():
            raise S2IError(f"nothing to resume in {run}: {saved} not found")
        import json
        base.update(dataclasses.asdict(config_from_dict(cls, json.loads(saved.read_text()))))
    cfg = dataclass_from_args(cls, args, **base)
    if not cfg.store:
        raise S2IError("--store is required: a dataset store built by `python -m trainer "
                       "prepare`")
    return cfg, args.resume


def main(argv: list[str]) -> int:
    cfg, resume = parse(argv, AudioConfig, "audio", "python -m trainer audio")
    train_audio(cfg, resume)
    return 0
