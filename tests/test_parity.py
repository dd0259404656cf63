"""Parity can fail: ``python -m export --verify`` on deliberately broken graphs (a zeroed
weight, two mask inputs swapped), edited with the onnx package, catches both; an untrained
network is reported as uninformative."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers_export import make_tiny_checkpoint, shared_export
from onnx import numpy_helper

from export.__main__ import main as export_main
from export.parity import SENSITIVITY_MIN, parity_inputs, reference, sensitivity
from runtime.artifacts import sha256_file
from runtime.errors import S2IError, run_cli
from runtime.model.masks import draw_masks
from trainer.calibrate import calibrate_batchnorm
from trainer.models import AudioEncoder, DenseGenerator

D = 32


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_export(tmp_path_factory, embedding_dim=D, input_sensitive=True)  # seed 0


def verify(export_dir: Path, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run_cli(lambda: export_main(["--verify", str(export_dir), *extra]))
    return code, out.getvalue()


def broken_copy(export_dir: Path, where: Path, edit) -> Path:
    """A copy whose generator.onnx is edited by ``edit(model)``, re-hashed in the manifest
    (as a buggy exporter would have written it): only parity can notice."""
    copy = where / edit.__name__
    shutil.copytree(export_dir, copy)
    path = copy / "generator.onnx"
    model = onnx.load(str(path))
    edit(model)
    onnx.save_model(model, str(path))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"]["generator"]["sha256"] = sha256_file(path)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def zeroed_weight(model: onnx.ModelProto) -> None:
    """The largest convolution weight set to zeros."""
    tensor = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    zeros = numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(tensor)), tensor.name)
    tensor.CopyFrom(zeros)


def swapped_masks(model: onnx.ModelProto) -> None:
    """mask0 and mask1 (same channel count) feed each other's layer."""
    swap = {"mask0": "mask1", "mask1": "mask0"}
    for node in model.graph.node:
        node.input[:] = [swap.get(name, name) for name in node.input]


def test_verify_passes_an_intact_export(export_dir: Path) -> None:
    code, printed = verify(export_dir)
    assert code == 0, printed
    lines = printed.splitlines()
    assert any(line.startswith("encoder.onnx") and line.endswith(" ok") for line in lines)
    assert any(line.startswith("generator.onnx") and line.endswith(" ok") for line in lines)
    assert any(line.startswith("encoder_audio.onnx") and line.endswith(" ok") for line in lines)
    assert "3 file(s) match" in printed and "sensitivity of the checkpoint" in printed


@pytest.mark.parametrize("edit", [zeroed_weight, swapped_masks])
def test_verify_catches_a_broken_graph(export_dir: Path, tmp_path: Path, edit) -> None:
    manifest = json.loads((export_dir / "manifest.json").read_text())
    if edit is swapped_masks:
        channels = [s["channels"] for s in manifest["dropout"]]
        assert channels[0] == channels[1], channels    # the swapped graph still runs
    code, printed = verify(broken_copy(export_dir, tmp_path, edit))
    assert code == 1, printed
    line = next(x for x in printed.splitlines() if x.startswith("generator.onnx"))
    assert line.endswith("MISMATCH") and "relative error max" in line
    assert next(x for x in printed.splitlines() if x.startswith("encoder.onnx")).endswith("ok")
    assert "1 file(s) do NOT match: generator" in printed


def test_verify_needs_the_same_checkpoint(export_dir: Path, tmp_path: Path) -> None:
    other = make_tiny_checkpoint(tmp_path / "other.ckpt.pt", embedding_dim=D, seed=5)
    code, _ = verify(export_dir, "--checkpoint", str(other))
    assert code == 2
    with pytest.raises(S2IError, match="not the one"):
        export_main(["--verify", str(export_dir), "--checkpoint",
                     str(other)])
    with pytest.raises(S2IError, match="is not here"):
        export_main(["--verify", str(export_dir), "--checkpoint", str(tmp_path / "no.pt")])


def test_untrained_weights_are_flagged_and_calibrated_ones_are_not() -> None:
    torch.manual_seed(0)
    encoder, generator = AudioEncoder(D, 0.125).eval(), DenseGenerator(D, 0.125).eval()
    for module in [*encoder.modules(), *generator.modules()]:   # as helpers_export does
        if isinstance(module, torch.nn.BatchNorm2d):
            with torch.no_grad():
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    dropout = [{"input": f"mask{i}", "p": p, "channels": c} for i, (p, c) in
               enumerate(zip(generator.dropout_p, generator.mask_channels, strict=True))]
    spectrogram, masks = parity_inputs(dropout, 4)
    z, image = reference(encoder, generator, spectrogram, masks)
    fresh = sensitivity(generator, z, image, dropout)
    assert fresh["input"] < SENSITIVITY_MIN       # every sound gives the same picture
    calibrate_batchnorm(encoder, generator)
    z, image = reference(encoder, generator, spectrogram, draw_masks(
        dropout, 4, np.random.default_rng(0)))
    calibrated = sensitivity(generator, z, image, dropout)
    assert min(calibrated.values()) > 0.1
