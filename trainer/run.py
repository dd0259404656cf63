"""A run folder: the one place that knows where everything inside a run lives.

```
RUN/config_<command>.json           the command's typed config, as used
RUN/checkpoints/<stage>_last.pt     the newest checkpoint of a stage
RUN/checkpoints/<stage>_eNNNN.pt    periodic snapshots
RUN/samples/*.png                   picture grids
RUN/tensorboard/                    event files
RUN/metrics.json                    one section per stage
RUN/store/                          the demo's dataset store
RUN/export/                         ``python -m export RUN``
```

Torch-free: training, the demo, sampling, evaluation and export all ask it for paths.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path
from typing import Any, TypeVar

from runtime.artifacts import atomic_write_json, read_json
from runtime.config import config_from_dict, save_config
from runtime.errors import S2IError

T = TypeVar("T")
FOREIGN_MARKS = {"manifest.json": "a store, export or classifiers folder",
                 "index.json": "a samples folder"}
SNAPSHOT_NAME = re.compile(r"^(?P<stage>[a-z]+)_e(?P<epoch>\d+)\.pt$")


class RunFolder:
    """Paths inside one run folder (nothing is created until something is written)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder | None:
        """The run a checkpoint file lies in (``RUN/checkpoints/x.pt``), else None."""
        parent = Path(checkpoint).parent
        return cls(parent.parent) if parent.name == "checkpoints" else None

    # -- what lies inside -------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.json"

    @property
    def store(self) -> Path:
        return self.path / "store"

    @property
    def export(self) -> Path:
        return self.path / "export"

    def config_file(self, command: str) -> Path:
        return self.path / f"config_{command}.json"

    def last(self, stage: str) -> Path:
        """``checkpoints/<stage>_last.pt``: always the newest checkpoint of ``stage``."""
        return self.checkpoints / f"{stage}_last.pt"

    def snapshot(self, stage: str, epoch: int) -> Path:
        return self.checkpoints / f"{stage}_e{epoch:04d}.pt"

    def sample(self, name: str) -> Path:
        return self.samples / name

    # -- reading and writing ----------------------------------------------------------
    def check_ours(self) -> None:
        """Refuse to write a run into a folder that holds something else (a store, an
        export, a samples or classifiers folder): nothing already there is mixed or lost."""
        if self.path.exists() and not self.path.is_dir():
            raise S2IError(f"run folder {self.path} is a file; choose another --run-dir")
        for name, holds in FOREIGN_MARKS.items():
            if (self.path / name).exists():
                raise S2IError(f"{self.path} holds {name} ({holds}), not a training run; "
                               "choose another --run-dir")

    def snapshots(self, stage: str) -> list[tuple[int, Path]]:
        """``(epoch, path)`` of every ``<stage>_eNNNN.pt`` snapshot, by epoch."""
        if not self.checkpoints.is_dir():
            return []
        found = [(int(m["epoch"]), p) for p in self.checkpoints.iterdir()
                 if (m := SNAPSHOT_NAME.match(p.name)) and m["stage"] == stage]
        return sorted(found)

    def find(self, stage: str) -> Path:
        """The newest ``stage`` checkpoint; a clear error when there is none."""
        candidate = self.last(stage)
        if candidate.is_file():
            return candidate
        raise S2IError(f"no '{stage}' checkpoint in {self.path} (expected {candidate})")

    def lock(self, writer: bool = True) -> contextlib.AbstractContextManager:
        """Held while writing the run: a second writer gets one error line
        (``trainer.run_lock``); ``writer=False`` (other ranks) takes none."""
        from trainer.run_lock import lock_run
        return lock_run(self.path, writer)

    def save_config(self, config: Any, command: str) -> Path:
        path = self.config_file(command)
        save_config(config, path)
        return path

    def load_config(self, cls: type[T], command: str) -> T:
        """The config a command saved here (for ``--resume``)."""
        path = self.config_file(command)
        if not path.is_file():
            raise S2IError(f"nothing to resume in {self.path}: {path} not found")
        return config_from_dict(cls, read_json(path, "run config"))

    def metrics(self) -> dict[str, Any]:
        return read_json(self.metrics_file, "run metrics") if self.metrics_file.is_file() else {}

    def update_metrics(self, section: str, values: dict[str, Any]) -> None:
        """Merge one stage's figures into ``metrics.json`` (atomically)."""
        metrics = self.metrics()
        metrics[section] = values
        atomic_write_json(self.metrics_file, metrics)


def find_checkpoint(run_or_file: str | Path, stage: str = "gan") -> Path:
    """A run folder -> its newest ``<stage>`` checkpoint; a file -> itself."""
    path = Path(run_or_file)
    return path if path.is_file() else RunFolder(path).find(stage)
