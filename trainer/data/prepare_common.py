"""Settings and helpers shared by the store builders of ``python -m trainer prepare``."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runtime.errors import S2IError
from runtime.frontend import AUTHORS_FRONT_END, FRONT_END_PRESETS, FrontEndConfig

VEGAS_CLASSES = ("Baby cry", "Dog", "Rail transport", "Fireworks", "Water flowing")
SPLITS = ("train", "val", "test")
# c00K_sNNNNN_wMMM.jpg: class K (1-based), source video NNNNN, 1-s window MMM
SEGMENT_NAME = re.compile(r"^c(\d+)_s(\d+)_w(\d+)\.jpe?g$", re.IGNORECASE)
VIDEO_ID_STRIDE = 100_000       # video ids restart per class in s2i_data: id = class*STRIDE + N


@dataclass(frozen=True)
class DemoSizes:
    """Clips per class in each split of the built-in demo set; ``windows_per_video`` 1-s
    windows per pseudo-video. The one place the demo's sizes are stated."""

    train: int = 240
    val: int = 40
    test: int = 40
    windows_per_video: int = 5


DEMO_SIZES = DemoSizes()
KINDS = ("auto", "demo", "videos", "jpg", "bin")


@dataclass
class PrepareOptions:
    """Everything ``prepare`` can be told (its command line is generated from these fields);
    each builder reads the fields it needs."""

    sources: list[str] = field(default_factory=list, metadata={
        "positional": True, "metavar": "SOURCE",
        "help": "'demo', a video folder, JPG folder/.tar.gz, or .bin files/folder"})
    out: Path = field(default=Path("store"), metadata={"required": True,
                                                       "help": "store folder to write"})
    kind: str = field(default="auto", metadata={"choices": KINDS, "help": "source kind"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace an existing store at --out"})
    seed: int = field(default=0, metadata={"help": "seed for splits, balancing, demo"})
    balance: bool | None = field(default=None, metadata={
        "help": "equal items per class in each split, as the paper does (default: on for "
                "videos; off for the authors' JPG/bin sets, balanced at the source)"})
    split: str | None = field(default=None, metadata={
        "help": "JPG/bin: put every input in this split (default: from folder/file names "
                "train|val|test, data_/val_/test_batch)"})
    resplit: bool = field(default=False, metadata={
        "help": "JPG/audio-visual bin: ignore folder names, split by video (--fractions)"})
    fractions: tuple[float, float, float] = field(default=(0.8, 0.1, 0.1), metadata={
        "nargs": 3, "metavar": ("TRAIN", "VAL", "TEST"), "help": "split fractions by video"})
    classes: list[str] | None = field(default=None, metadata={
        "help": "class names in label order (videos: the subfolder names to use)"})
    limit: int | None = field(default=None, metadata={
        "help": "use at most N items (files/records) of each input"})
    max_seconds: int = field(default=10, metadata={
        "help": "videos: 1-s segments per video at most"})
    workers: int = field(default=2, metadata={"help": "videos: decoding processes"})
    bin_format: str = field(default="auto", metadata={
        "choices": ("auto", "audio", "audio-visual")})
    label_base: str = field(default="auto", metadata={
        "choices": ("auto", "0", "1"),
        "help": "audio .bin label bytes count classes from 0 or 1 (auto: detect)"})
    front_end_name: str | None = field(default=None, metadata={
        "flag": "--front-end", "choices": sorted(FRONT_END_PRESETS),
        "help": "the front end the store's spectrograms are (stamped in the store; default: "
                "s2i-official-clip for the authors' JPG/bin spectrograms, 'default' for "
                "videos/demo; docs/DATA.md)"})
    sample_rate: int | None = field(default=None, metadata={
        "help": "videos/demo: front-end sample rate (default: the front end's)"})
    demo_train: int = field(default=DEMO_SIZES.train, metadata={
        "help": "demo: train clips per class"})
    demo_val: int = field(default=DEMO_SIZES.val, metadata={"help": "demo: val clips per class"})
    demo_test: int = field(default=DEMO_SIZES.test, metadata={
        "help": "demo: test clips per class"})
    demo_windows: int = field(default=DEMO_SIZES.windows_per_video, metadata={
        "help": "demo: 1-s windows per video"})
    preview: str | None = field(default=None, metadata={
        "help": "also write a PNG grid of a few items per class"})
    quiet: bool = field(default=False, metadata={"help": "no progress bars"})
    progress: bool = field(default=True, metadata={"cli": False})
    # None: s2i-official for JPG/bin, else the default (prepare.build decides)
    front_end: FrontEndConfig | None = field(default=None, metadata={"cli": False})

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.limit is not None and self.limit <= 0:
            raise S2IError(f"--limit must be positive, got {self.limit}")
        if self.max_seconds <= 0:
            raise S2IError(f"--max-seconds must be positive, got {self.max_seconds}")
        for name in ("demo_train", "demo_val", "demo_test"):
            if getattr(self, name) < 0:
                raise S2IError(f"--{name.replace('_', '-')} must not be negative")
        if self.demo_windows <= 0:
            raise S2IError("--demo-windows must be positive")
        self.fractions = check_fractions(self.fractions)
        self.workers = max(1, self.workers)
        self.progress = self.progress and not self.quiet
        if self.front_end is None and self.front_end_name:
            self.front_end = FrontEndConfig.preset(self.front_end_name)
        if self.sample_rate:
            self.front_end = dataclasses.replace(self.front_end or FrontEndConfig(),
                                                 sample_rate=self.sample_rate)

    @property
    def demo_sizes(self) -> DemoSizes:
        return DemoSizes(self.demo_train, self.demo_val, self.demo_test, self.demo_windows)


def official_front_end(opts: PrepareOptions) -> FrontEndConfig:
    """The front end of a store of the authors' spectrograms: the given one, else the
    ``s2i-official-clip`` preset (estimated from them; docs/DATA.md)."""
    return opts.front_end or FrontEndConfig.preset(AUTHORS_FRONT_END)


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


def segment_id(class_index: int, video: int, window: int) -> str:
    """``c00K_sNNNNN_wMMM``: class ``class_index`` (0-based; 1-based in the id), source video,
    1-s window: the s2i_data naming that every store's item ids follow."""
    return f"c{class_index + 1:03d}_s{video:05d}_w{window:03d}"


def video_key(class_index: int, video_number: int) -> int:
    return class_index * VIDEO_ID_STRIDE + video_number
