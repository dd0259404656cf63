"""The exact ConvTranspose -> Conv rewrite (export/conv_rewrite.py), on single nodes and on
a whole exported translator (input-sensitive weights)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers_export import make_tiny_checkpoint
from onnx import TensorProto, helper, numpy_helper

from export.conv_rewrite import rewrite_file, rewrite_model
from export.onnx_export import op_types
from export.translator import ExportConfig, export_translator
from runtime.model.masks import draw_masks
from trainer.checkpoint import load_translator


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


# (kernel, stride, pad begin, pad end, output padding): the generator's three kinds, then
# asymmetric pads, output padding, strides 3 and 4, kernels that do not divide the stride
CASES = [(2, 1, 0, 0, 0), (3, 1, 0, 0, 0), (3, 1, 1, 1, 0), (4, 2, 1, 1, 0), (3, 2, 1, 1, 1),
         (5, 3, 2, 2, 0), (4, 2, 0, 0, 0), (5, 2, 1, 2, 1), (1, 1, 0, 0, 0), (4, 4, 0, 0, 0),
         (3, 2, 0, 1, 0), (6, 3, 1, 1, 2)]


@pytest.mark.parametrize("kernel,stride,pad_begin,pad_end,out_pad", CASES)
def test_single_node_is_rewritten_exactly(kernel: int, stride: int, pad_begin: int,
                                          pad_end: int, out_pad: int) -> None:
    rng = np.random.default_rng(kernel * 100 + stride * 10 + pad_begin)
    for height in (1, 2, 5):
        width = height + 1
        out_h = stride * (height - 1) + kernel - pad_begin - pad_end + out_pad
        out_w = stride * (width - 1) + kernel - pad_begin - pad_end + out_pad
        weight = rng.standard_normal((3, 5, kernel, kernel)).astype(np.float32)
        bias = rng.standard_normal(5).astype(np.float32)
        node = helper.make_node("ConvTranspose", ["x", "W", "B"], ["y"], strides=[stride] * 2,
                                pads=[pad_begin, pad_begin, pad_end, pad_end],
                                output_padding=[out_pad] * 2, kernel_shape=[kernel] * 2)
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                        [2, 3, height, width])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5, out_h, out_w])],
            [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        x = rng.standard_normal((2, 3, height, width)).astype(np.float32)
        expected = _run(model, x)
        report = rewrite_model(model)
        onnx.checker.check_model(model, full_check=True)
        assert "ConvTranspose" not in {n.op_type for n in model.graph.node}
        assert report["stride1" if stride == 1 else "strided"] == 1 and not report["kept"]
        got = _run(model, x)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_grouped_node_is_kept_with_its_reason() -> None:
    node = helper.make_node("ConvTranspose", ["x", "W"], ["y"], group=2)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 5, 5])],
        [numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    report = rewrite_model(model)
    assert report["kept"] == ["0: grouped convolution"]
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_exported_generator_matches_pytorch_at_fp32_precision(tmp_path: Path) -> None:
    """21 stride-1 and 4 strided layers rewritten; the ONNX generator (rewritten and not)
    equals PyTorch to ~1e-6 relative, on weights whose images depend on the input."""
    checkpoint = make_tiny_checkpoint(tmp_path / "ck.pt", input_sensitive=True)
    original = export_translator(ExportConfig(checkpoint, tmp_path / "ct", fused=False,
                                              tensorrt=False, conv_rewrite=False))
    assert "ConvTranspose" in op_types(original / "generator.onnx")
    rewritten = tmp_path / "rw"
    rewritten.mkdir()
    shutil.copy(original / "generator.onnx", rewritten / "generator.onnx")
    assert rewrite_file(rewritten / "generator.onnx") == {"stride1": 21, "strided": 4,
                                                          "kept": []}
    assert "ConvTranspose" not in op_types(rewritten / "generator.onnx")
    assert {"Conv", "DepthToSpace"} <= op_types(rewritten / "generator.onnx")
    manifest = onnx_manifest(original)
    translator = load_translator(checkpoint)
    generator = translator.generator.eval()
    rng = np.random.default_rng(0)
    spectrograms = torch.from_numpy(rng.uniform(-1, 1, (4, 1, 128, 100)).astype(np.float32))
    masks = draw_masks(manifest["dropout"], 4, rng)
    with torch.no_grad():
        z = translator.encoder.eval()(spectrograms)
        reference = generator(z, [torch.from_numpy(m) for m in masks]).numpy()
    feeds = {"embedding": z.numpy(), **{s["input"]: m for s, m in zip(manifest["dropout"],
                                                                       masks, strict=True)}}
    for folder in (rewritten, original):
        session = ort.InferenceSession(str(folder / "generator.onnx"),
                                       providers=["CPUExecutionProvider"])
        image = session.run(None, feeds)[0]
        assert _relative(image, reference) < 1e-5
    # input-sensitive: different sounds give different pictures (tens of grey levels)
    assert np.abs(reference[0] - reference[1]).mean() * 127.5 > 5


def onnx_manifest(folder: Path) -> dict:
    import json
    return json.loads((folder / "manifest.json").read_text())
