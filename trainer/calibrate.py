"""Input-sensitive weights without training: BatchNorm statistics from synthetic sounds.

A freshly initialised translator maps every sound to the same picture (activations shrink
through 25 layers to ~1e-7), so a test or a parity check built on it cannot see audio that
never reaches the model, streams mixed up in a batch or a broken engine. Running the
networks in training mode over a few synthetic spectrograms sets every BatchNorm's running
statistics to the activations it really sees; in eval mode every layer then works at O(1)
and the images change with the input (tens of grey levels) and with the dropout masks.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models import AudioEncoder, DenseGenerator


def synthetic_spectrograms(count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 1, 128, 100]`` smooth random spectrograms in [-1, 1] with varied levels."""
    noise = torch.rand(count, 1, 128, 100, generator=generator) * 2 - 1
    smooth = nn.functional.avg_pool2d(noise, 9, 1, 4) * 3
    level = torch.rand(count, 1, 1, 1, generator=generator) * 2 - 1
    return (smooth + level).clamp(-1, 1)


@torch.no_grad()
def calibrate_batchnorm(encoder: AudioEncoder, generator: DenseGenerator, seed: int = 0,
                        batches: int = 4, batch_size: int = 16) -> None:
    """Reset and re-estimate every BatchNorm's running statistics (cumulative average over
    ``batches`` synthetic batches, generator without dropout); leaves both in eval mode."""
    rng = torch.Generator().manual_seed(seed)
    norms = [m for m in (*encoder.modules(), *generator.modules())
             if isinstance(m, nn.BatchNorm2d)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
    encoder.train()
    generator.train()
    try:
        for _ in range(batches):
            embedding = encoder(synthetic_spectrograms(batch_size, rng))
            generator(embedding, generator.ones_masks(batch_size))
    finally:
        for norm, momentum in zip(norms, momenta, strict=True):
            norm.momentum = momentum
        encoder.eval()
        generator.eval()
