"""Linear probe: how well embeddings separate the classes (multinomial logistic regression)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                          test_y: torch.Tensor, n_classes: int, steps: int = 300,
                          seed: int = 0) -> float:
    """Fit a softmax classifier on standardised train embeddings; accuracy on the test ones."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    weight = (torch.randn(xs.shape[1], n_classes, generator=gen) * 0.01).requires_grad_()
    bias = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=0.05, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(xs @ weight + bias, train_y).backward()
        opt.step()
    with torch.no_grad():
        return float(((xt @ weight + bias).argmax(1) == test_y).float().mean())
