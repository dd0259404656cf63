"""The paper's GAN losses: MSE to target RC-scores and the moving-average adversarial loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def rc_target_loss(scores: torch.Tensor, target: float) -> torch.Tensor:
    """MSE between RC-scores and a target score (r_max for real, r_min for generated)."""
    return F.mse_loss(scores, torch.full_like(scores, target))


class MovingAverageAdversarialLoss:
    """Eq. 5: ``L_ma = (L_batch + sum of the previous k-1 epoch-mean losses) / k``.

    Only the current batch term carries gradient; the past epoch means are constants. In the
    first epochs, before ``k-1`` epoch means exist, the average runs over those there are.
    Call ``end_epoch()`` after each epoch to push that epoch's mean batch loss.
    """

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"moving-average window k must be >= 1, got {window}")
        self.window = window
        self.epoch_means: list[float] = []
        self._sum = 0.0
        self._count = 0

    def __call__(self, batch_loss: torch.Tensor) -> torch.Tensor:
        self._sum += float(batch_loss.detach())
        self._count += 1
        past = self.epoch_means[-(self.window - 1):] if self.window > 1 else []
        return (batch_loss + sum(past)) / (1 + len(past))

    def end_epoch(self) -> None:
        if self._count:
            self.epoch_means.append(self._sum / self._count)
        self._sum, self._count = 0.0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "epoch_means": list(self.epoch_means),
                "sum": self._sum, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window = int(state["window"])
        self.epoch_means = [float(x) for x in state["epoch_means"]]
        self._sum, self._count = float(state["sum"]), int(state["count"])
