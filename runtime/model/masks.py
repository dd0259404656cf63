"""MC-dropout channel masks drawn in numpy: one value per channel per sample."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def draw_masks(dropout: Sequence[dict[str, Any]], batch: int,
               rng: np.random.Generator) -> list[np.ndarray]:
    """One float32 ``[batch, channels]`` mask per dropout layer: 0 or ``1/(1-p)``.

    ``dropout`` is the export manifest's list of ``{"input", "p", "channels"}``.
    """
    masks = []
    for spec in dropout:
        p = float(spec["p"])
        keep = rng.random((batch, int(spec["channels"]))) >= p
        masks.append((keep / (1.0 - p)).astype(np.float32))
    return masks


def ones_masks(dropout: Sequence[dict[str, Any]], batch: int) -> list[np.ndarray]:
    """Masks that drop nothing: the deterministic translation."""
    return [np.ones((batch, int(spec["channels"])), np.float32) for spec in dropout]
