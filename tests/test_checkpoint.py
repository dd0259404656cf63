"""Checkpoint files: nothing but tensors and plain data is ever unpickled, every byte is
sealed with a sha256, damaged or crafted files are one error line naming the file."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_export import make_tiny_checkpoint

from export.translator import ExportConfig, export_translator
from runtime.errors import S2IError
from trainer.checkpoint import load_checkpoint, read_state, save_checkpoint, seal


class RunsCode:
    """Pickles as "call os.system(command)": what a crafted checkpoint does."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple:
        return (os.system, (self.command,))


def crafted(marker: Path) -> dict:
    return {"format": "s2i-checkpoint", "version": 2, "stage": "gan",
            "payload": RunsCode(f"touch {marker}")}


def one_line(info: pytest.ExceptionInfo) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


def test_crafted_checkpoint_never_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    buffer = io.BytesIO()
    torch.save(crafted(marker), buffer)
    unsealed = tmp_path / "unsealed.pt"
    unsealed.write_bytes(buffer.getvalue())
    sealed = tmp_path / "sealed.pt"           # a seal is a checksum, not a signature
    sealed.write_bytes(seal(buffer.getvalue()))
    legacy = tmp_path / "legacy.pt"           # the pre-zip torch format: a bare pickle
    legacy.write_bytes(pickle.dumps(crafted(marker)))
    with pytest.raises(S2IError, match="no S2I sha256 seal") as info:
        load_checkpoint(unsealed)
    assert str(unsealed) in one_line(info)
    with pytest.raises(S2IError, match=r"holds objects other than tensors.*posix\.system"
                       r".*refused") as info:
        load_checkpoint(sealed)
    assert str(sealed) in one_line(info)
    with pytest.raises(S2IError, match="holds objects other than tensors") as info:
        read_state(unsealed)                  # the unpickler itself refuses, seal or not
    assert str(unsealed) in one_line(info)
    with pytest.raises(S2IError, match="is not a readable zip archive") as info:
        read_state(legacy)                    # never unpickled: S2I writes zip archives only
    assert str(legacy) in one_line(info)
    assert not marker.exists()


def test_crafted_checkpoint_through_the_export_cli(tmp_path: Path) -> None:
    """The issue's reproduction: `python -m export crafted.pt` ran a command."""
    marker = tmp_path / "code_ran"
    buffer = io.BytesIO()
    torch.save(crafted(marker), buffer)
    path = tmp_path / "gan_last.pt"
    path.write_bytes(seal(buffer.getvalue()))
    result = subprocess.run([sys.executable, "-m", "export", str(path), "--out",
                             str(tmp_path / "out"), "--no-tensorrt"],
                            capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: checkpoint") and "refused" in lines[0]
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_flipped_byte_is_one_line_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    weights = torch.full((256,), 1.2345, dtype=torch.float32)
    save_checkpoint(path, {"stage": "audio", "front_end": {}, "models": {"w": weights}})
    assert torch.equal(load_checkpoint(path)["models"]["w"], weights)
    data = path.read_bytes()
    at = data.index(weights.numpy().tobytes()) + 100     # inside the tensor's bytes
    for offset in (at, 0, len(data) // 2, len(data) - 70, len(data) - 1):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(S2IError, match="is damaged|no S2I sha256 seal") as info:
            load_checkpoint(path)
        assert str(path) in one_line(info), offset


def test_every_single_byte_flip_is_caught(tmp_path: Path) -> None:
    """Not only the bytes that carry content: zip headers, padding, the seal itself."""
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"stage": "audio", "epoch": 3, "front_end": {},
                           "models": {"w": torch.arange(8.0)}})
    data = path.read_bytes()
    for offset in range(len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x80
        path.write_bytes(bytes(damaged))
        with pytest.raises(S2IError, match="is damaged|no S2I sha256 seal"):
            load_checkpoint(path)


def test_thousands_of_flipped_bytes_never_reach_export(tmp_path: Path) -> None:
    """The issue: 5,000 flipped bytes went through export with "parity ok"."""
    checkpoint = make_tiny_checkpoint(tmp_path / "gan_last.pt", width=0.125, embedding_dim=16)
    data = bytearray(checkpoint.read_bytes())
    rng = np.random.default_rng(0)
    for offset in rng.choice(len(data) - 200, 5000, replace=False) + 100:
        data[offset] ^= 0x10
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(S2IError, match="is damaged") as info:
        export_translator(ExportConfig(checkpoint, tmp_path / "out", tensorrt=False))
    assert str(checkpoint) in one_line(info)
    assert not (tmp_path / "out").exists()


def test_only_plain_data_can_be_saved(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['history'\]\[0\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "c.pt", {"history": [np.zeros(3)]})
    assert not (tmp_path / "c.pt").exists()


def test_front_end_in_a_checkpoint_is_range_checked(tmp_path: Path) -> None:
    checkpoint = make_tiny_checkpoint(tmp_path / "c.pt", width=0.125, embedding_dim=16)
    state = load_checkpoint(checkpoint)
    save_checkpoint(tmp_path / "bad.pt", {**state, "front_end": {**state["front_end"],
                                                                 "hop_ms": 0}})
    with pytest.raises(S2IError, match=r"bad\.pt: front end: hop_ms must be") as info:
        load_checkpoint(tmp_path / "bad.pt")
    one_line(info)


def test_damaged_checkpoint_stops_resume(tmp_path: Path) -> None:
    """The issue: flipped bytes also went through `--resume`."""
    from runtime.config import save_config
    from trainer.data.demo_data import build_demo_store
    from trainer.train.audio import AudioConfig

    store = build_demo_store(tmp_path / "store", n_per_class_train=1, n_val=1, n_test=1,
                             progress=False)
    run = tmp_path / "run"
    save_config(AudioConfig(store=str(store), run_dir=str(run), embedding_dim=16, width=0.125),
                run / "config_audio.json")
    last = run / "checkpoints" / "audio_last.pt"
    save_checkpoint(last, {"stage": "audio", "embedding_dim": 16, "width": 0.125,
                           "front_end": {}, "models": {"w": torch.ones(1000)}})
    data = bytearray(last.read_bytes())
    data[data.index(torch.ones(1000).numpy().tobytes())] ^= 0x04
    last.write_bytes(bytes(data))
    result = subprocess.run([sys.executable, "-m", "trainer", "audio", "--resume", "--run-dir",
                             str(run)], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: checkpoint {last} is damaged")
