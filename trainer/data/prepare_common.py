"""Settings and helpers shared by the store builders of ``python -m trainer prepare``."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig

VEGAS_CLASSES = ("Baby cry", "Dog", "Rail transport", "Fireworks", "Water flowing")
SPLITS = ("train", "val", "test")
# c00K_sNNNNN_wMMM.jpg: class K (1-based), source video NNNNN, 1-s window MMM
SEGMENT_NAME = re.compile(r"^c(\d+)_s(\d+)_w(\d+)\.jpe?g$", re.IGNORECASE)
VIDEO_ID_STRIDE = 100_000       # video ids restart per class in s2i_data: id = class*STRIDE + N


@dataclass
class PrepareOptions:
    """Everything ``prepare`` can be told; each builder reads the fields it needs."""

    out: Path
    overwrite: bool = False
    seed: int = 0
    balance: bool | None = None                  # None: on for videos, off for JPG/bin/demo
    split: str | None = None                     # force one split for JPG/bin inputs
    resplit: bool = False                        # JPG/bin: ignore folder names, split by video
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    classes: list[str] | None = None
    limit: int | None = None                     # at most this many items per input
    max_seconds: int = 10                        # videos: segments per video at most
    workers: int = 2
    bin_format: str = "auto"                     # auto | audio | audio-visual
    label_base: str = "auto"                     # binary audio labels: auto | 0 | 1
    front_end: FrontEndConfig | None = None      # None: s2i-official for JPG/bin, else default
    progress: bool = True
    demo_train: int = 240
    demo_val: int = 40
    demo_test: int = 40
    demo_windows: int = 5


def official_front_end(opts: PrepareOptions) -> FrontEndConfig:
    """The front end of a store of the authors' spectrograms: the given one, else the
    ``s2i-official`` preset (estimated from them; docs/DATA.md)."""
    return opts.front_end or FrontEndConfig.preset("s2i-official")


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise S2IError(f"--fractions needs three non-negative numbers (train val test), got "
                       f"{list(fractions)}")
    total = float(sum(fractions))
    return (fractions[0] / total, fractions[1] / total, fractions[2] / total)


def split_by_video(videos_per_class: dict[int, list[Hashable]],
                   fractions: Sequence[float], seed: int) -> dict[Hashable, str]:
    """Assign whole videos to splits, class by class (so every split sees every class).

    Each class's videos are shuffled with ``seed``; the first ``round(f_val * n)`` go to
    val, the next ``round(f_test * n)`` to test (at least one each when the fraction is
    positive and the class has 3+ videos), the rest to train. A segment's split is
    its video's: no video is ever in two splits.
    """
    f_train, f_val, f_test = check_fractions(fractions)
    rng = np.random.default_rng(seed)
    assignment: dict[Hashable, str] = {}
    for k in sorted(videos_per_class):
        videos = sorted(set(videos_per_class[k]), key=str)
        order = rng.permutation(len(videos))
        n = len(videos)
        # every class in every split that asks for some: at least one video once n >= 3
        n_val = max(int(round(f_val * n)), int(f_val > 0 and n >= 3))
        n_test = max(int(round(f_test * n)), int(f_test > 0 and n >= 3))
        if f_train > 0 and n_val + n_test >= n and n > 0:   # keep at least one training video
            n_test = max(0, n - 1 - n_val)
            n_val = min(n_val, n - 1)
        for rank, i in enumerate(order):
            split = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
            assignment[videos[i]] = split
    return assignment


def split_from_path(path: str) -> str | None:
    """``.../val/c001_...jpg`` -> ``val``: the nearest folder named train/val/test."""
    for part in reversed(Path(path).parts[:-1]):
        if part.lower() in SPLITS:
            return part.lower()
    return None


def video_key(class_index: int, video_number: int) -> int:
    return class_index * VIDEO_ID_STRIDE + video_number
