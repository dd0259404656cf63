"""Checkpoints: one dict per file, written atomically, validated on load."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig, check_same_front_end
from runtime.manifest import atomic_write_bytes

CHECKPOINT_FORMAT = "s2i-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (stage, models, config, ...) atomically; adds format and version."""
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, stage: str | None = None,
                    embedding_dim: int | None = None,
                    front_end: FrontEndConfig | None = None) -> dict[str, Any]:
    """Read and check a checkpoint; every mismatch is one clear ``S2IError`` line."""
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path, stage or "gan")
    if not path.is_file():
        raise S2IError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise S2IError(f"checkpoint {path} is unreadable ({type(exc).__name__}); "
                       "expected a file written by `python -m trainer`") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise S2IError(f"{path} is not an S2I checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise S2IError(f"{path} has checkpoint version {state.get('version')}, "
                       f"expected {CHECKPOINT_VERSION}")
    if stage is not None and state.get("stage") != stage:
        raise S2IError(f"{path} is a '{state.get('stage')}' checkpoint, expected '{stage}'")
    if embedding_dim is not None and state.get("embedding_dim") != embedding_dim:
        raise S2IError(f"{path} has embedding size D={state.get('embedding_dim')}, "
                       f"but D={embedding_dim} was asked for")
    if front_end is not None:
        check_same_front_end(front_end, state["front_end"], f"checkpoint {path}")
    return state


def find_checkpoint(run_or_file: str | Path, stage: str = "gan") -> Path:
    """A run folder -> its newest ``<stage>`` checkpoint; a file -> itself."""
    path = Path(run_or_file)
    if path.is_file():
        return path
    candidate = path / "checkpoints" / f"{stage}_last.pt"
    if candidate.is_file():
        return candidate
    raise S2IError(f"no '{stage}' checkpoint in {path} (expected {candidate})")
