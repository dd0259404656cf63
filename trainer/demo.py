"""``python -m trainer`` with no command: the whole pipeline, small, on the built-in demo set.

1. builds the demo store (synthesised sounds paired with scenes drawn from them);
2. trains a small audio autoencoder, then the GAN on its frozen encoder (paper settings,
   networks shrunk by ``width``);
3. checks that held-out translations are about their sound: an independent classifier,
   trained on the demo's REAL train images, assigns generated images of TEST sounds to their
   sound's class; chance is 20%.

Everything lands in one run folder (default ``runs/demo``): store/, checkpoints/, samples/
(PNG grids), tensorboard/, config_*.json and metrics.json. Re-running continues where a
previous run stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.config import parse_config
from runtime.errors import S2IError
from runtime.wire.images import save_png
from trainer.checkpoint import load_checkpoint, load_translator
from trainer.data.batches import load_batch, open_split
from trainer.data.demo_data import build_demo_store
from trainer.data.prepare_common import DEMO_SIZES
from trainer.data.store import Store
from trainer.evaluate.real_classifier import class_probabilities, train_real_classifier
from trainer.images import image_grid, to_uint8_images
from trainer.run import RunFolder
from trainer.train.audio import AudioConfig, train_audio
from trainer.train.gan import GanConfig, train_gan


@dataclass
class DemoConfig:
    run_dir: str = "runs/demo"
    seed: int = 0
    embedding_dim: int = 512
    width: float = 0.125
    train_per_class: int = DEMO_SIZES.train
    val_per_class: int = DEMO_SIZES.val
    test_per_class: int = DEMO_SIZES.test
    audio_epochs: int = 20
    gan_epochs: int = 100
    mc_samples: int = 4
    device: str = "cpu"


def ensure_store(cfg: DemoConfig) -> Store:
    path = RunFolder(cfg.run_dir).store
    if (path / "manifest.json").is_file():
        return Store(path)
    print(f"[1/4] building the demo set in {path}", flush=True)
    build_demo_store(path, n_per_class_train=cfg.train_per_class, n_val=cfg.val_per_class,
                     n_test=cfg.test_per_class, seed=cfg.seed)
    return Store(path)


def finished(run: RunFolder, stage: str, cfg: DemoConfig, epochs: int) -> bool | None:
    """True when done, False when a resumable checkpoint exists, None when nothing exists.

    A checkpoint of another D or width is refused: the run folder belongs to other settings.
    """
    last = run.last(stage)
    if not last.is_file():
        return None
    state = load_checkpoint(last, stage=stage, embedding_dim=cfg.embedding_dim, width=cfg.width)
    return int(state["epoch"]) >= epochs


def coherence(run: RunFolder, store: Store, mc_samples: int, seed: int) -> dict[str, Any]:
    """Share of generated images of test sounds that a real-image classifier puts in the
    sound's class (several MC samples per sound)."""
    translator = load_translator(run.last("gan"))  # BatchNorm in inference mode; MC dropout on
    encoder, generator = translator.encoder, translator.generator
    classifier, real_val_accuracy = train_real_classifier(store, seed=seed)
    split_name = "test" if "test" in store.splits else "val"
    split = open_split(store, split_name, need_images=True)
    torch.manual_seed(seed)
    correct, total = 0, 0
    per_class = np.zeros((len(store.classes), 2))
    with torch.no_grad():
        for start in range(0, len(split), 128):
            batch = load_batch(split, np.arange(start, min(start + 128, len(split))), False)
            z = encoder(batch.spectrograms)
            for _ in range(mc_samples):
                images = to_uint8_images(generator(z))
                predicted = class_probabilities(classifier, images).argmax(1)
                hits = predicted == batch.labels.numpy()
                correct += int(hits.sum())
                total += len(hits)
                np.add.at(per_class, batch.labels.numpy(), np.stack([hits, np.ones_like(hits)], 1))
    return {"split": split_name, "mc_samples": mc_samples,
            "accuracy_on_generated": correct / total,
            "per_class": {c: per_class[i, 0] / max(per_class[i, 1], 1)
                          for i, c in enumerate(store.classes)},
            "classifier_accuracy_on_real_val": real_val_accuracy,
            "chance": 1.0 / len(store.classes)}


def translation_sheet(run: RunFolder, store: Store, per_class: int = 6) -> Path:
    """One PNG: per class, a row of real test frames and a row of their translations."""
    translator = load_translator(run.last("gan"))
    encoder, generator = translator.encoder, translator.generator
    split = open_split(store, "test" if "test" in store.splits else "val", need_images=True)
    rows = []
    with torch.no_grad():
        for k in range(len(store.classes)):
            idx = np.flatnonzero(split.labels == k)[:: max(1, (split.labels == k).sum()
                                                           // per_class)][:per_class]
            batch = load_batch(split, idx, True)
            rows += [batch.images, generator(encoder(batch.spectrograms))]
    path = run.sample("demo_test_translations.png")
    save_png(path, image_grid(rows))
    return path


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    run = RunFolder(cfg.run_dir)
    run.check_ours()
    started = time.perf_counter()
    store = ensure_store(cfg)
    run.save_config(cfg, "demo")
    audio = AudioConfig(store=str(store.path), run_dir=str(run.path),
                        embedding_dim=cfg.embedding_dim, width=cfg.width,
                        epochs=cfg.audio_epochs, seed=cfg.seed, device=cfg.device,
                        snapshot_every=cfg.audio_epochs)
    state = finished(run, "audio", cfg, cfg.audio_epochs)
    if not state:
        print(f"[2/4] training the audio autoencoder ({cfg.audio_epochs} epochs)", flush=True)
        train_audio(audio, resume=state is False)
    gan = GanConfig(store=str(store.path), encoder=str(run.path), run_dir=str(run.path),
                    width=cfg.width, epochs=cfg.gan_epochs, seed=cfg.seed, device=cfg.device)
    state = finished(run, "gan", cfg, cfg.gan_epochs)
    if not state:
        print(f"[3/4] training the GAN ({cfg.gan_epochs} epochs)", flush=True)
        train_gan(gan, resume=state is False)
    print("[4/4] checking that held-out translations are about their sound", flush=True)
    result = coherence(run, store, cfg.mc_samples, cfg.seed)
    result["sheet"] = str(translation_sheet(run, store))
    result["seconds"] = round(time.perf_counter() - started, 1)
    run.update_metrics("coherence", result)
    print(f"class coherence of test translations: {result['accuracy_on_generated']:.1%} "
          f"(chance {result['chance']:.0%}; the classifier scores "
          f"{result['classifier_accuracy_on_real_val']:.1%} on real val images)")
    print(f"run folder: {run.path}  (samples/, checkpoints/, metrics.json; "
          f"picture: {result['sheet']})")
    print("next: python -m export --fp16   then   s2i-stream --file some.wav")
    return result


def main(argv: list[str]) -> int:
    cfg = parse_config(DemoConfig, argv, "python -m trainer", __doc__)
    if cfg.audio_epochs < 1 or cfg.gan_epochs < 1:
        raise S2IError("--audio-epochs and --gan-epochs must be at least 1")
    run = RunFolder(cfg.run_dir)
    run.check_ours()
    with run.lock():                        # store, both stages and the report: one writer
        run_demo(cfg)
    return 0
