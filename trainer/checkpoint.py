"""Checkpoints: one dict per file, written atomically, sealed, validated on load.

Safe to open whatever their origin (docs/TRAINING.md, "Checkpoints"):

* Files are read with ``torch.load(weights_only=True)``, PyTorch's restricted unpickler: it
  builds only tensors and plain containers (dict, list, tuple, str, int, float, bool, None)
  and refuses every other global, so a crafted file cannot run code.
* Every file is sealed with the sha256 of all its bytes, kept in the zip archive comment
  that ends a ``torch.save`` file (``s2i-sha256:<hex>``; plain ``torch.load`` still opens
  it). The seal is checked before anything is unpickled: a flipped byte anywhere is one
  error line naming the file.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runtime.artifacts import atomic_write_bytes, check_format, check_tree
from runtime.errors import S2IError, first_line
from runtime.frontend import FrontEndConfig, check_same_front_end
from trainer.models import MAX_EMBEDDING_DIM, MAX_WIDTH, AudioEncoder, DenseGenerator
from trainer.run import find_checkpoint

CHECKPOINT_FORMAT = "s2i-checkpoint"
CHECKPOINT_VERSION = 2   # 2: sealed with a sha256, plain data only (weights_only loading)
_SEAL_PREFIX = b"s2i-sha256:"
_SEAL_LENGTH = len(_SEAL_PREFIX) + 64
_END_OF_ZIP = b"PK\x05\x06"  # the zip end-of-central-directory record: 22 bytes + comment
MAX_CHECKPOINT_BYTES = 8 << 30   # uncompressed; S2I's checkpoints are a few to a few 100 MB
MAX_ENTRIES = 100_000            # torch.save writes one entry per tensor storage, plus 6
_SLACK = 1 << 20                 # declared sizes may exceed the file by this much
_ENTRY_NAME = re.compile(r"[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)+")


def _check_plain(value: Any, where: str) -> None:
    """Only what ``weights_only`` loading builds: fail when saving, not when resuming."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, where)
            _check_plain(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (torch.Tensor, str, bool, int, float))):
        raise TypeError(f"checkpoint entry {where} is a {type(value).__module__}."
                        f"{type(value).__qualname__}; a checkpoint holds only tensors, dicts, "
                        "lists, tuples, str, int, float, bool and None")


def seal(data: bytes) -> bytes:
    """``torch.save`` bytes -> the same zip archive with ``s2i-sha256:<hex>`` as its comment
    (the hash of every byte before the comment's length field)."""
    if data[-22:-18] != _END_OF_ZIP or data[-2:] != b"\0\0":
        raise RuntimeError("torch.save wrote no plain zip archive; cannot seal the checkpoint")
    comment = _SEAL_PREFIX + hashlib.sha256(data[:-2]).hexdigest().encode()
    return data[:-2] + struct.pack("<H", len(comment)) + comment


def check_seal(path: Path, what: str = "checkpoint", remedy: str = "use another checkpoint",
               chunk: int = 1 << 20) -> None:
    """Recompute a sealed file's sha256 and compare it with its seal (one ``S2IError`` line
    naming ``what`` and the file)."""
    size = path.stat().st_size
    tail = 2 + _SEAL_LENGTH
    with open(path, "rb") as f:
        if size < 22 + _SEAL_LENGTH:
            end = b""
        else:
            f.seek(size - 22 - _SEAL_LENGTH)
            end = f.read()
        if end[:4] != _END_OF_ZIP or end[-tail:-_SEAL_LENGTH] != struct.pack("<H", _SEAL_LENGTH) \
                or not end[-_SEAL_LENGTH:].startswith(_SEAL_PREFIX):
            raise S2IError(f"{what} {path} carries no S2I sha256 seal (damaged, or not written "
                           f"by this S2I, checkpoint version {CHECKPOINT_VERSION}); refused")
        digest = hashlib.sha256()
        f.seek(0)
        left = size - tail
        while left > 0 and (block := f.read(min(chunk, left))):
            digest.update(block)
            left -= len(block)
    if digest.hexdigest().encode() != end[-64:]:
        raise S2IError(f"{what} {path} is damaged: its bytes do not match the sha256 it was "
                       f"sealed with (changed after it was written); {remedy}")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (stage, models, config, ...) atomically and sealed, with format and
    version (any of these in ``state`` are replaced). Only tensors and plain data."""
    body = {k: v for k, v in state.items() if k not in ("format", "version")}
    body = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **body}
    _check_plain(body, "state")
    buffer = io.BytesIO()
    torch.save(body, buffer)
    atomic_write_bytes(path, seal(buffer.getvalue()))


def check_archive(path: Path, what: str = "checkpoint") -> None:
    """Refuse, from its central directory alone, a zip that ``torch.load`` should not open:
    one that is no zip, has more than ``MAX_ENTRIES`` entries, a name that is absolute,
    holds ``..``, a backslash or a control character, or is not under the one top folder
    ``torch.save`` writes, a name twice, or declared sizes adding up to more than the file
    (+1 MiB) or ``MAX_CHECKPOINT_BYTES`` (a zip bomb). One ``S2IError`` line naming it."""
    def refuse(why: str) -> S2IError:
        return S2IError(f"{what} {path} {why}; refused (expected a file written by "
                        "`python -m trainer`)")

    try:
        size = path.stat().st_size
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise refuse(f"is not a readable zip archive ({first_line(exc)})") from exc
    if not entries or len(entries) > MAX_ENTRIES:
        raise refuse(f"has {len(entries)} zip entries (expected 1 to {MAX_ENTRIES})")
    names = [entry.filename for entry in entries]
    top = names[0].split("/")[0]
    for name in names:
        if not _ENTRY_NAME.fullmatch(name) or name.split("/")[0] != top or ".." in name:
            raise refuse(f"has a zip entry named {name[:80]!r} (expected {top}/NAME, no '..')")
    if len(set(names)) != len(names):
        raise refuse("names a zip entry twice")
    declared = sum(entry.file_size for entry in entries)
    if declared > min(size + _SLACK, MAX_CHECKPOINT_BYTES):
        raise refuse(f"declares {declared} bytes of contents in a {size}-byte file (a zip "
                     f"bomb; torch.save stores its entries uncompressed)")


def read_state(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load`` with the restricted unpickler (nothing but tensors and plain data is
    built; no seal check) of an archive ``check_archive`` accepts, its contents bounded by
    ``runtime.artifacts.check_tree``; every failure one ``S2IError`` line."""
    check_archive(path, what)
    try:
        with warnings.catch_warnings():   # old pickle protocols warn; the answer is the same
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if refused or "Weights only load failed" in str(exc):
            detail = f" ({refused.group(1)})" if refused else ""
            raise S2IError(f"{what} {path} holds objects other than tensors and plain "
                           f"data{detail}; refused (S2I never unpickles code). Expected a "
                           "file written by `python -m trainer`") from exc
        raise S2IError(f"{what} {path} is unreadable ({type(exc).__name__}); "
                       "expected a file written by `python -m trainer`") from exc
    check_tree(state, f"{what} {path}")
    return state


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
    check_seal(path)
    state = read_state(path)
    check_format(state, path, "checkpoint", CHECKPOINT_FORMAT, CHECKPOINT_VERSION)
    check_state(state, path)
    try:
        checked = FrontEndConfig.from_dict(state.get("front_end"))
    except S2IError as exc:
        raise S2IError(f"checkpoint {path}: {exc}") from exc
    if stage is not None and state.get("stage") != stage:
        raise S2IError(f"{path} is a '{state.get('stage')}' checkpoint, expected '{stage}'")
    if embedding_dim is not None and state.get("embedding_dim") != embedding_dim:
        raise S2IError(f"{path} has embedding size D={state.get('embedding_dim')}, "
                       f"but D={embedding_dim} was asked for")
    if width is not None and float(state.get("width", width)) != float(width):
        raise S2IError(f"{path} was trained with --width {state.get('width')}, but --width "
                       f"{width} was given; use the same width or another run folder")
    if front_end is not None:
        check_same_front_end(front_end, checked, f"checkpoint {path}")
    return state


# field -> (what it must be, test); only fields present are checked (stages write subsets).
# Networks are built from embedding_dim and widths: trainer.models bounds them, so a crafted
# checkpoint cannot make them allocate gigabytes.
_FIELDS: dict[str, tuple[str, Any]] = {
    "stage": ("a stage name", lambda v: isinstance(v, str) and len(v) <= 64),
    "embedding_dim": (f"an integer 4..{MAX_EMBEDDING_DIM}",
                      lambda v: type(v) is int and 4 <= v <= MAX_EMBEDDING_DIM),
    "width": (f"a number in (0, {MAX_WIDTH:g}]", lambda v: _number(v, MAX_WIDTH)),
    "encoder_width": (f"a number in (0, {MAX_WIDTH:g}]", lambda v: _number(v, MAX_WIDTH)),
    "generator_transitions": ("a name", lambda v: isinstance(v, str) and len(v) <= 64),
    "classes": ("a list of class names",
                lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v)),
    "epoch": ("a count", lambda v: type(v) is int and 0 <= v < 2**63),
    "step": ("a count", lambda v: type(v) is int and 0 <= v < 2**63),
    "models": ("an object of weights", lambda v: isinstance(v, dict)),
    "front_end": ("an object", lambda v: isinstance(v, dict)),
}


def _number(value: Any, most: float) -> bool:
    return type(value) in (int, float) and 0 < value <= most


def _show(value: Any) -> str:
    """A short form of an unpickled value for an error line (never a huge string)."""
    if type(value) is int and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)[:80]
    return f"a {type(value).__name__}"


def check_state(state: dict[str, Any], path: Path) -> None:
    """The fields S2I reads from a checkpoint have their types and ranges (a network is built
    from ``embedding_dim`` and ``width``: 10**9 would allocate before failing)."""
    for key, (expected, ok) in _FIELDS.items():
        if key in state and not ok(state[key]):
            raise S2IError(f"checkpoint {path}: {key} should be {expected}, got "
                           f"{_show(state[key])}; expected a file written by "
                           "`python -m trainer`")


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

