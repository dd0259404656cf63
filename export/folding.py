"""Fold every BatchNorm into the convolution before it, for inference graphs."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An eval-mode copy of ``module`` in which each ``Conv -> BatchNorm`` pair inside an
    ``nn.Sequential`` is one convolution with the running statistics folded in (the
    BatchNorm becomes ``nn.Identity``). The original module is untouched."""
    folded = copy.deepcopy(module).eval()
    for seq in folded.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.children())
        for i in range(len(children) - 1):
            conv, norm = children[i], children[i + 1]
            if isinstance(norm, nn.BatchNorm2d) and isinstance(conv, (nn.Conv2d,
                                                                        nn.ConvTranspose2d)):
                transpose = isinstance(conv, nn.ConvTranspose2d)
                seq[i] = fuse_conv_bn_eval(conv, norm, transpose=transpose)
                seq[i + 1] = nn.Identity()
    left = [name for name, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if left:
        raise ValueError(f"BatchNorm layers not folded (no conv before them): {left}")
    return folded
