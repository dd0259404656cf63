"""Stage 2: the translator GAN (``python -m trainer gan --store S --encoder AUDIO_RUN --run R``).

The frozen audio encoder turns each spectrogram into x. The generator G minimises the pixel
MSE plus ``lambda`` times the moving-average adversarial loss (Eq. 5); the discriminator D
minimises the MSE of its RC-score to ``r_max`` on real pairs and ``r_min`` on generated ones.
D is updated once per ``n_gd`` generator updates (the paper's algorithm, section 4.3).

``n_gd_unit`` says what an "update" is. The paper's algorithm reads as batches, but its
evaluation skips "the 2 epochs immediately after the discriminator update", which only makes
sense when D is updated in whole epochs. The default is therefore ``epoch``: in every
``n_gd``-th epoch (1-based) D is trained on each batch before G's step; in the others only G
learns. ``batch`` applies the same rule to the global batch counter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from runtime.errors import S2IError
from runtime.frontend import check_same_front_end
from trainer.checkpoint import generator_transitions, load_checkpoint
from trainer.data.batches import Batch, count_batches, epoch_batches, load_batch, open_split
from trainer.data.store import Store
from trainer.images import image_grid
from trainer.losses import MovingAverageAdversarialLoss, rc_target_loss
from trainer.models import (
    AudioEncoder,
    DenseGenerator,
    Discriminator,
    check_embedding_dim,
    check_transition_widths,
    check_width,
)
from trainer.presets import preset_overrides
from trainer.run import find_checkpoint
from trainer.train.audio import PRESET_HELP
from trainer.train.common import Dist, StageTrainer, check_positive, parse_stage, train_stage


@dataclass
class GanConfig:
    store: str = ""
    preset: str = field(default="", metadata={"help": PRESET_HELP})
    encoder: str = field(default="", metadata={"help": "audio run folder or audio checkpoint"})
    run_dir: str = "runs/gan"
    embedding_dim: int | None = None    # None: the encoder's D
    width: float = 1.0
    generator_transitions: str = field(default="official", metadata={
        "help": "transition widths: 'official' (the authors' code) or 'next-block' (older runs)"})
    mix_front_ends: bool = field(default=False, metadata={
        "help": "train on a store whose front end is not the encoder's (refused otherwise)"})
    epochs: int = 4000
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.5
    adv_lambda: float = 0.1
    ma_window: int = 10                 # k of Eq. 5: not in the paper (ours; docs/FIDELITY.md)
    n_gd: int = 5
    n_gd_unit: str = "epoch"            # "epoch" or "batch"
    r_max: float = 1.0
    r_min: float = -1.0
    seed: int = 0
    device: str = "cpu"
    max_batches: int | None = None
    snapshot_every: int = 5
    grid_sounds: int = 8
    grid_mc_samples: int = 6

    def __post_init__(self) -> None:
        preset_overrides(GanConfig, self.preset)
        if self.n_gd_unit not in ("epoch", "batch"):
            raise ValueError(f"n_gd_unit must be 'epoch' or 'batch', got '{self.n_gd_unit}'")
        if self.n_gd < 1:
            raise ValueError(f"n_gd must be >= 1, got {self.n_gd}")
        if self.embedding_dim is not None:
            check_embedding_dim(self.embedding_dim)
        check_transition_widths(self.generator_transitions)
        check_positive(self, "epochs", "batch_size", "ma_window", "snapshot_every", "width",
                       "lr", "grid_sounds", "grid_mc_samples")
        check_width(self.width)


def d_turn(cfg: GanConfig, epoch: int, step: int) -> bool:
    """Whether D is updated now; ``epoch`` and ``step`` are 1-based counters."""
    return (epoch if cfg.n_gd_unit == "epoch" else step) % cfg.n_gd == 0


def d_update_description(cfg: GanConfig) -> dict[str, Any]:
    """What a D update was in this run, for its metrics and reports."""
    unit = "epochs" if cfg.n_gd_unit == "epoch" else "batches"
    return {"n_gd": cfg.n_gd, "unit": cfg.n_gd_unit,
            "text": f"D trained once per {cfg.n_gd} generator {unit}"}


def load_frozen_encoder(cfg: GanConfig, store: Store, device: torch.device
                        ) -> tuple[AudioEncoder, dict[str, Any]]:
    if not cfg.encoder:
        raise S2IError("--encoder is required: the audio run folder (or audio checkpoint) "
                       "from `python -m trainer audio`")
    path = find_checkpoint(cfg.encoder, "audio")
    state = load_checkpoint(path, stage="audio", embedding_dim=cfg.embedding_dim)
    try:
        check_same_front_end(state["front_end"], store.front_end, f"store {store.path}")
    except S2IError as exc:
        if not cfg.mix_front_ends:
            raise S2IError(f"{exc}; the encoder {path} learned other features (pass "
                           "--mix-front-ends to train on them anyway)") from exc
        print(f"warning: {exc}; training on it anyway (--mix-front-ends)", flush=True)
    encoder = AudioEncoder(state["embedding_dim"], state["width"])
    encoder.load_state_dict(state["models"]["encoder"])
    encoder.to(device).eval().requires_grad_(False)
    return encoder, {"path": str(path), "width": state["width"],
                     "embedding_dim": state["embedding_dim"]}


class GanTrainer(StageTrainer):
    """Holds the networks, optimisers and loss state of one GAN run."""

    stage = "gan"

    def __init__(self, cfg: GanConfig, world: Dist) -> None:
        super().__init__(cfg, world)
        self.train = open_split(self.store, "train", need_images=True)
        held = "test" if "test" in self.store.splits else "val"
        self.held_out = open_split(self.store, held if held in self.store.splits else "train",
                                   need_images=True)
        self.encoder, self.encoder_info = load_frozen_encoder(cfg, self.store, world.device)
        dim = self.encoder_info["embedding_dim"]
        self.generator = DenseGenerator(dim, cfg.width, cfg.generator_transitions
                                        ).to(world.device)
        self.discriminator = Discriminator(dim, cfg.width).to(world.device)
        self.opt_g = torch.optim.SGD(self.generator.parameters(), cfg.lr, cfg.momentum)
        self.opt_d = torch.optim.SGD(self.discriminator.parameters(), cfg.lr, cfg.momentum)
        self.ma_loss = MovingAverageAdversarialLoss(cfg.ma_window)
        self.g = self.parallel(self.generator)
        self.d = self.parallel(self.discriminator)

    # -- checkpoints ---------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {**self.base_state(), "embedding_dim": self.encoder_info["embedding_dim"],
                "width": self.cfg.width, "encoder_width": self.encoder_info["width"],
                "generator_transitions": self.cfg.generator_transitions,
                "models": {"encoder": self.encoder.state_dict(),
                           "generator": self.generator.state_dict(),
                           "discriminator": self.discriminator.state_dict()},
                "optimizers": {"generator": self.opt_g.state_dict(),
                               "discriminator": self.opt_d.state_dict()},
                "ma_loss": self.ma_loss.state_dict(), "encoder_checkpoint": self.encoder_info}

    def resume(self) -> None:
        state = self.load_last(embedding_dim=self.encoder_info["embedding_dim"],
                               front_end=self.store.front_end, width=self.cfg.width)
        if generator_transitions(state) != self.cfg.generator_transitions:
            raise S2IError(f"{self.run.last(self.stage)} has '{generator_transitions(state)}' "
                           f"generator transitions, not '{self.cfg.generator_transitions}'; "
                           f"pass --generator-transitions {generator_transitions(state)}")
        # the frozen encoder the run was trained with, even if its audio run trained on since
        self.encoder.load_state_dict(state["models"]["encoder"])
        self.generator.load_state_dict(state["models"]["generator"])
        self.discriminator.load_state_dict(state["models"]["discriminator"])
        self.opt_g.load_state_dict(state["optimizers"]["generator"])
        self.opt_d.load_state_dict(state["optimizers"]["discriminator"])
        self.ma_loss.load_state_dict(state["ma_loss"])

    # -- one batch -----------------------------------------------------------------------
    def train_batch(self, batch: Batch, update_d: bool) -> dict[str, float]:
        cfg = self.cfg
        with torch.no_grad():
            z = self.encoder(batch.spectrograms)
        assert batch.images is not None
        out: dict[str, float] = {}
        if update_d:
            with torch.no_grad():
                fake = self.g(z)
            # one forward over a balanced batch: as many real as generated pairs
            scores = self.d(torch.cat([batch.images, fake]), torch.cat([z, z]))
            real_scores, fake_scores = scores.chunk(2)
            loss_d = rc_target_loss(real_scores, cfg.r_max) + rc_target_loss(fake_scores,
                                                                             cfg.r_min)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
            out.update(d_loss=loss_d.item(), rc_real=real_scores.mean().item(),
                       rc_fake_d=fake_scores.mean().item())
        fake = self.g(z)
        # D scores the generated images the way it is trained: in a balanced batch with the
        # real ones (its last BatchNorm normalises over the batch, so a batch of generated
        # images alone would always score the same on average). The plain module, not DDP:
        # D's weights get no gradient here.
        scores = self.discriminator(torch.cat([batch.images, fake]), torch.cat([z, z]))
        fake_scores = scores.chunk(2)[1]
        pixel = F.mse_loss(fake, batch.images)
        adversarial = rc_target_loss(fake_scores, cfg.r_max)
        loss_g = pixel + cfg.adv_lambda * self.ma_loss(adversarial)
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward(inputs=list(self.generator.parameters()))
        self.opt_g.step()
        out.update(pixel_loss=pixel.item(), adv_loss=adversarial.item(), g_loss=loss_g.item(),
                   rc_fake=fake_scores.detach().mean().item())
        return out

    # -- one epoch -----------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        cfg, world = self.cfg, self.world
        epoch = self.epoch + 1
        self.seed_epoch(epoch)
        self.g.train()
        self.d.train()
        n_batches = count_batches(self.train, cfg.batch_size, cfg.max_batches)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        d_updates = 0
        bar = tqdm(total=n_batches, desc=f"gan epoch {epoch}/{cfg.epochs}", leave=False,
                   disable=not world.is_main)
        for batch in epoch_batches(self.train, cfg.batch_size, self.epoch, cfg.seed,
                                   with_images=True, rank=world.rank,
                                   world_size=world.world_size, max_batches=cfg.max_batches,
                                   device=world.device):
            self.step += 1
            update_d = d_turn(cfg, epoch, self.step)
            d_updates += int(update_d)
            values = self.train_batch(batch, update_d)
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
            self.writer.scalars({f"gan/{k}": v for k, v in values.items()}, self.step)
            bar.set_postfix(pixel=f"{values['pixel_loss']:.4f}", adv=f"{values['adv_loss']:.3f}")
            bar.update()
        bar.close()
        self.ma_loss.end_epoch()
        self.epoch = epoch
        means = {k: self.mean_over_ranks(sums[k] / counts[k]) for k in sorted(sums)}
        return {"epoch": epoch, "d_updates": d_updates, **means}

    # -- pictures ------------------------------------------------------------------------
    def sample_grids(self) -> None:
        cfg = self.cfg
        gen = self.generator
        gen.eval()
        with torch.no_grad():
            for name, split in (("train", self.train), ("held_out", self.held_out)):
                n = min(cfg.grid_sounds, len(split))
                step = max(1, len(split) // n)
                batch = load_batch(split, np.arange(0, step * n, step)[:n], True,
                                   self.world.device)
                fake = gen(self.encoder(batch.spectrograms))
                self.writer.picture(f"gan/{name}_real_vs_generated",
                                    image_grid([batch.images, fake]), self.epoch,
                                    f"gan_{name}_e{self.epoch:04d}.png")
            z = self.encoder(batch.spectrograms[:1]).repeat(cfg.grid_mc_samples, 1)
            self.writer.picture("gan/mc_samples_of_one_sound",
                                image_grid([batch.images[:1], gen(z)]), self.epoch,
                                f"gan_mc_e{self.epoch:04d}.png")

    def fit(self) -> list[dict[str, Any]]:
        cfg, world = self.cfg, self.world
        while self.epoch < cfg.epochs:
            record = self.train_epoch()
            self.history.append(record)
            self.writer.scalars({f"gan_epoch/{k}": v for k, v in record.items()
                                 if k != "epoch"}, self.epoch)
            if world.is_main:
                print(f"gan epoch {self.epoch}/{cfg.epochs}: pixel {record['pixel_loss']:.4f} "
                      f"adv {record['adv_loss']:.4f} rc fake {record['rc_fake']:+.3f}"
                      + (f" | D updated: loss {record['d_loss']:.4f} rc real "
                         f"{record['rc_real']:+.3f}" if record["d_updates"] else ""), flush=True)
                snapshot = self.snapshot_due()
                self.save(snapshot)
                if snapshot:
                    self.sample_grids()
        if world.is_main:
            self.run.update_metrics("gan", {
                "epochs": cfg.epochs, "preset": cfg.preset or None,
                "d_update": d_update_description(cfg), "history": self.history})
        return self.history


def train_gan(cfg: GanConfig, resume: bool = False) -> list[dict[str, Any]]:
    return train_stage(GanTrainer, cfg, resume)


def main(argv: list[str]) -> int:
    cfg, resume = parse_stage(argv, GanConfig, "gan", "python -m trainer gan", __doc__)
    train_gan(cfg, resume)
    return 0
