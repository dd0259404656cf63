"""The real-image classifier: a small independent 5-class CNN trained on a store's REAL
images (train split; accuracy reported on the real images of the validation split). It scores
generated images for the automatic labels (``trainer.evaluate.autolabel``), the demo's class
coherence (``trainer.demo``) and the INT8 export's gate (``export.quality``)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from runtime.errors import S2IError
from trainer.data.store import Store
from trainer.images import from_uint8_images


class RealImageClassifier(nn.Module):
    """Four stride-2 convs + linear: ``[B, 3, 96, 96]`` in [-1, 1] -> class logits."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = (3, 16, 32, 64, 64)
        for a, b in zip(channels, channels[1:], strict=False):
            layers += [nn.Conv2d(a, b, 3, 2, 1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(channels[-1], n_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def train_real_classifier(store: Store, epochs: int = 8, batch_size: int = 64, seed: int = 0,
                          progress: bool = True) -> tuple[RealImageClassifier, float | None]:
    """Fit the classifier on the train split's real images; return it and its val accuracy."""
    if not store.has_images:
        raise S2IError(f"store {store.path} has no real images; automatic labels need them "
                       "(label with the page instead: `python -m trainer label DIR`)")
    torch.manual_seed(seed)
    train = store.split("train")
    images = np.asarray(train.images)
    labels = torch.from_numpy(np.array(train.labels))
    model = RealImageClassifier(len(store.classes))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="real-image classifier", unit="epoch",
                  disable=not progress):
        order = rng.permutation(len(labels))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(from_uint8_images(images[idx])), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    val_accuracy = None
    if "val" in store.splits:
        val = store.split("val")
        probs = class_probabilities(model, np.asarray(val.images))
        val_accuracy = float((probs.argmax(1) == np.asarray(val.labels)).mean())
    return model, val_accuracy


@torch.no_grad()
def class_probabilities(model: nn.Module, images_u8: np.ndarray,
                        batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = [F.softmax(model(from_uint8_images(images_u8[s:s + batch_size])), 1).numpy()
           for s in range(0, len(images_u8), batch_size)]
    return np.concatenate(out)
