"""The moving-average adversarial loss (Eq. 5) and the RC-score losses."""

from __future__ import annotations

import pytest
import torch

from trainer.losses import MovingAverageAdversarialLoss, rc_target_loss


def test_value_averages_the_batch_with_previous_epoch_means() -> None:
    ma = MovingAverageAdversarialLoss(window=3)
    for epoch_losses in ([1.0, 3.0], [4.0], [10.0]):        # epoch means 2, 4, 10
        for value in epoch_losses:
            ma(torch.tensor(value))
        ma.end_epoch()
    assert ma.epoch_means == [2.0, 4.0, 10.0]
    out = ma(torch.tensor(1.0))
    assert out.item() == pytest.approx((1.0 + 4.0 + 10.0) / 3)   # only the last k-1 means


def test_first_epochs_average_over_what_exists() -> None:
    ma = MovingAverageAdversarialLoss(window=5)
    assert ma(torch.tensor(0.8)).item() == pytest.approx(0.8)
    ma.end_epoch()
    assert ma(torch.tensor(0.2)).item() == pytest.approx((0.2 + 0.8) / 2)


def test_only_the_batch_term_carries_gradient() -> None:
    ma = MovingAverageAdversarialLoss(window=4)
    for value in (5.0, 6.0, 7.0):
        ma(torch.tensor(value))
        ma.end_epoch()
    w = torch.tensor(2.0, requires_grad=True)
    batch_loss = (w - 1.0) ** 2                                 # d/dw = 2(w-1) = 2
    ma(batch_loss).backward()
    assert w.grad is not None and w.grad.item() == pytest.approx(2.0 / 4)


def test_state_round_trip() -> None:
    ma = MovingAverageAdversarialLoss(window=3)
    ma(torch.tensor(1.0))
    ma.end_epoch()
    ma(torch.tensor(3.0))
    other = MovingAverageAdversarialLoss(window=1)
    other.load_state_dict(ma.state_dict())
    x = torch.tensor(0.5)
    assert other(x).item() == ma(x).item()


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window"):
        MovingAverageAdversarialLoss(0)


def test_rc_target_loss_is_mse_to_the_target() -> None:
    scores = torch.tensor([0.5, -0.5, 1.0])
    assert rc_target_loss(scores, 1.0).item() == pytest.approx((0.25 + 2.25 + 0) / 3)
    assert rc_target_loss(scores, -1.0).item() == pytest.approx((2.25 + 0.25 + 4) / 3)
