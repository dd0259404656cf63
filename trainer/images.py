"""Pictures between the networks and files: float tensors ``[B, C, H, W]`` in [-1, 1] <->
uint8 ``[B, H, W, 3]`` arrays, and grids of them (PNG encoding: ``runtime.wire.images``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def to_uint8_images(batch: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in [-1, 1] -> uint8 ``[B, H, W, 3]`` (one channel is repeated)."""
    x = ((batch.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
    x = x.permute(0, 2, 3, 1).numpy()
    return np.repeat(x, 3, axis=3) if x.shape[3] == 1 else x


def from_uint8_images(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float32 ``[B, 3, H, W]`` in [-1, 1] (a permuted view)."""
    x = torch.from_numpy(np.asarray(images_u8, dtype=np.float32) / 127.5 - 1.0)
    return x.permute(0, 3, 1, 2)


def image_grid(rows: Sequence[torch.Tensor], pad: int = 2) -> np.ndarray:
    """Rows of image batches -> one uint8 picture, white gaps between images."""
    pictures = [to_uint8_images(r) for r in rows]
    h, w = pictures[0].shape[1:3]
    cols = max(p.shape[0] for p in pictures)
    grid = np.full((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for r, pics in enumerate(pictures):
        for c, pic in enumerate(pics):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y:y + h, x:x + w] = pic
    return grid
