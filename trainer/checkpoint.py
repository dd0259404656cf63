"""Checkpoints: one dict per file, written atomically, validated on load."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.errors import S2IError, first_line
from runtime.frontend import FrontEndConfig, check_same_front_end
from runtime.manifest import atomic_write_bytes
from trainer.models import AudioEncoder, DenseGenerator

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
                    front_end: FrontEndConfig | None = None,
                    width: float | None = None) -> dict[str, Any]:
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
    if width is not None and float(state.get("width", width)) != float(width):
        raise S2IError(f"{path} was trained with --width {state.get('width')}, but --width "
                       f"{width} was given; use the same width or another run folder")
    if front_end is not None:
        check_same_front_end(front_end, state["front_end"], f"checkpoint {path}")
    return state


@dataclass
class Translator:
    """A GAN checkpoint's frozen encoder and generator (eval mode, MC dropout on)."""

    path: Path
    encoder: AudioEncoder
    generator: DenseGenerator
    state: dict[str, Any]

    @property
    def epoch(self) -> int:
        return int(self.state.get("epoch", 0))

    @property
    def embedding_dim(self) -> int:
        return int(self.state["embedding_dim"])

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.state.get("classes", [])]


def generator_transitions(state: dict[str, Any]) -> str:
    """The generator's transition widths in a GAN checkpoint; checkpoints written before the
    setting existed (2026-12-02) all used ``next-block``."""
    return str(state.get("generator_transitions", "next-block"))


def load_translator(path: str | Path) -> Translator:
    """A GAN checkpoint (a file, or a run folder -> its ``gan_last.pt``) as ready networks;
    anything missing or not fitting is one ``S2IError`` line naming the checkpoint."""
    path = Path(path)
    if path.is_dir():
        path = find_checkpoint(path, "gan")
    state = load_checkpoint(path, stage="gan")
    models = state.get("models", {})
    for name in ("encoder", "generator"):
        if not isinstance(models, dict) or name not in models:
            raise S2IError(f"GAN checkpoint {path} lacks the '{name}' weights; expected a "
                           "checkpoint written by `python -m trainer gan`")
    try:
        dim, width = int(state["embedding_dim"]), float(state.get("width", 1.0))
        encoder_width = float(state.get("encoder_width", width))  # the encoder may be wider
        transitions = generator_transitions(state)
        encoder = AudioEncoder(dim, encoder_width)
        generator = DenseGenerator(dim, width, transitions)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise S2IError(f"GAN checkpoint {path} is broken: {first_line(exc, with_type=True)} "
                       "(expected embedding_dim, width and encoder/generator weights)") from exc
    try:
        encoder.load_state_dict(models["encoder"])
        generator.load_state_dict(models["generator"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise S2IError(f"checkpoint {path} does not match the networks for D={dim}, "
                       f"width={width} (encoder width {encoder_width}, {transitions} "
                       f"generator transitions): "
                       f"{first_line(exc, with_type=True)}") from exc
    return Translator(path, encoder.eval(), generator.eval(), state)


def save_untrained_translator(path: str | Path, encoder: AudioEncoder, generator: DenseGenerator,
                              embedding_dim: int, width: float, note: str,
                              classes: Sequence[str] = ()) -> Path:
    """A GAN checkpoint of networks that were never trained (tests, timing benchmarks):
    what ``trainer gan`` writes, minus the discriminator and the training state."""
    path = Path(path)
    save_checkpoint(path, {
        "stage": "gan", "embedding_dim": embedding_dim, "width": width,
        "generator_transitions": generator.transition_widths,
        "front_end": FrontEndConfig().to_dict(), "classes": list(classes),
        "config": {"note": note}, "epoch": 0, "step": 0,
        "models": {"encoder": encoder.state_dict(), "generator": generator.state_dict()},
        "optimizers": {}, "history": {}, "store": {"path": None, "fingerprint": None},
    })
    return path


def find_checkpoint(run_or_file: str | Path, stage: str = "gan") -> Path:
    """A run folder -> its newest ``<stage>`` checkpoint; a file -> itself."""
    path = Path(run_or_file)
    if path.is_file():
        return path
    candidate = path / "checkpoints" / f"{stage}_last.pt"
    if candidate.is_file():
        return candidate
    raise S2IError(f"no '{stage}' checkpoint in {path} (expected {candidate})")
