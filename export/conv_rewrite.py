"""Exact rewrite of an ONNX graph's ``ConvTranspose`` nodes as ordinary ``Conv`` nodes.

CPU runtimes run ``ConvTranspose`` slower than ``Conv``, and their INT8 quantizers handle it
poorly (docs/EXPORT.md, "Conv rewrite"). Yet every transposed convolution is a convolution:

* stride 1: ``ConvTranspose(W, pads p)`` is ``Conv(W', pads k-1-p)`` with
  ``W'[o, i] = W[i, o]`` flipped in both spatial axes;
* stride s > 1: output pixel ``s*m + r`` (phase ``r`` along an axis) only receives the
  kernel taps ``t = (r + p) mod s (mod s)``, so each of the ``s*s`` phases is a stride-1
  convolution of the input with its own sub-kernel (flipped, asymmetric pads). The phases
  are concatenated on the channel axis and interleaved by ``DepthToSpace`` (mode DCR),
  then cropped to the transposed convolution's size when it is not a multiple of ``s``.

Every product of the original sum appears exactly once (no zero taps are added), so the
rewritten graph does the same arithmetic in another order: outputs agree to float rounding
(relative error ~1e-6 in FP32) at the same cost in multiply-adds. Channel counts, kernel,
stride and padding are read from each node, so any generator width works; the weights may be
FP32 or FP16 initializers. A node that cannot be rewritten (groups, dilation, weights that are
not initializers...) is kept as it is and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper


@dataclass(frozen=True)
class _Phase:
    """One output phase ``r`` along one axis: which kernel taps, in conv order, and pads."""

    taps: tuple[int, ...]
    pad_before: int
    pad_after: int


def _phases(kernel: int, stride: int, pad_begin: int, pad_end: int,
            output_padding: int) -> list[_Phase]:
    """Output ``s*m + r`` = sum_j x[m + q_r - j] * w[s*j + t_r] (``t_r = (r+p) mod s``,
    ``q_r = (r+p) // s``): a stride-1 convolution reading input rows ``m+q_r-n+1 .. m+q_r``
    (``n`` taps), i.e. the taps reversed, ``n-1-q_r`` rows of padding before. Every phase
    yields ``ceil(out / s)`` rows; ``out = s*(H-1) + k - p_b - p_e + op``, so the padding
    after, ``ceil((k - p_b - p_e + op) / s) - 1 + q_r``, does not depend on ``H``."""
    extra = -(-(kernel - pad_begin - pad_end + output_padding) // stride) - 1
    phases = []
    for r in range(stride):
        t_r, q_r = (r + pad_begin) % stride, (r + pad_begin) // stride
        n = len(range(t_r, kernel, stride))
        taps = tuple(stride * (n - 1 - u) + t_r for u in range(n))
        phases.append(_Phase(taps, n - 1 - q_r, extra + q_r))
    return phases


def _crop(kernel: int, stride: int, pad_begin: int, pad_end: int, output_padding: int) -> int:
    """Rows the phase outputs hold beyond the transposed convolution's output."""
    span = kernel - pad_begin - pad_end + output_padding      # out = s*(H-1) + span
    return (-(-span // stride)) * stride - span


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def why_not(node: onnx.NodeProto, weights: dict[str, np.ndarray]) -> str | None:
    """None if ``node`` (a ConvTranspose) can be rewritten, else the reason."""
    a = _attrs(node)
    if node.input[1] not in weights:
        return "weights are not an initializer"
    if len(node.input) > 2 and node.input[2] and node.input[2] not in weights:
        return "bias is not an initializer"
    w = weights[node.input[1]]
    if w.ndim != 4:
        return f"{w.ndim - 2}-D convolution (only 2-D is rewritten)"
    if int(a.get("group", 1)) != 1:
        return "grouped convolution"
    if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
        return "dilated convolution"
    auto_pad = a.get("auto_pad", b"NOTSET")
    if (auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad) != "NOTSET":
        return "auto_pad"
    if "output_shape" in a:
        return "output_shape attribute"
    kernel = [int(k) for k in a.get("kernel_shape", w.shape[2:])]
    if tuple(kernel) != tuple(w.shape[2:]):
        return "kernel_shape differs from the weights"
    strides = [int(s) for s in a.get("strides", [1, 1])]
    if strides[0] != strides[1] and max(strides) > 1:
        return "unequal strides (DepthToSpace needs one block size)"
    if any(k < s for k, s in zip(kernel, strides, strict=True)):
        return "kernel smaller than stride"
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
    out_pad = [int(p) for p in a.get("output_padding", [0, 0])]
    for axis in (0, 1):
        for phase in _phases(kernel[axis], strides[axis], pads[axis], pads[axis + 2],
                             out_pad[axis]):
            if phase.pad_before < 0 or phase.pad_after < 0:
                return "padding larger than the kernel (would need a crop before the Conv)"
    return None


def _rewrite_node(node: onnx.NodeProto, weights: dict[str, np.ndarray], index: int,
                  relu: onnx.NodeProto | None = None
                  ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The Conv (stride 1) or phase Convs + Concat + DepthToSpace (+ Slice) computing
    ``node``'s output. With ``relu`` (the output's only consumer), the ReLU is applied to
    each phase instead (it commutes with Concat, DepthToSpace and Slice), so runtimes fuse
    it into the convolutions; the nodes then produce the ReLU's output."""
    a = _attrs(node)
    w = weights[node.input[1]]                                  # [C_in, C_out, kH, kW]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    kernel = list(w.shape[2:])
    strides = [int(s) for s in a.get("strides", [1, 1])]
    pads = [int(p) for p in a.get("pads", [0, 0, 0, 0])]
    out_pad = [int(p) for p in a.get("output_padding", [0, 0])]
    axes = [_phases(kernel[i], strides[i], pads[i], pads[i + 2], out_pad[i]) for i in (0, 1)]
    base = f"{node.name or 'ConvTranspose'}_{index}_asconv"
    x, y = node.input[0], relu.output[0] if relu is not None else node.output[0]
    nodes: list[onnx.NodeProto] = []
    tensors: list[onnx.TensorProto] = []
    phase_outputs = []
    for ph in axes[0]:
        for pw in axes[1]:
            name = f"{base}_p{len(phase_outputs)}"
            sub = w[:, :, list(ph.taps)][:, :, :, list(pw.taps)].transpose(1, 0, 2, 3)
            tensors.append(numpy_helper.from_array(np.ascontiguousarray(sub), f"{name}_W"))
            out = y if len(axes[0]) * len(axes[1]) == 1 else f"{name}_out"
            conv_out = f"{name}_conv" if relu is not None else out
            nodes.append(helper.make_node(
                "Conv", [x, f"{name}_W", *([bias] if bias else [])], [conv_out], name=name,
                kernel_shape=list(sub.shape[2:]),
                pads=[ph.pad_before, pw.pad_before, ph.pad_after, pw.pad_after]))
            if relu is not None:
                nodes.append(helper.make_node("Relu", [conv_out], [out], name=f"{name}_relu"))
            phase_outputs.append(out)
    if len(phase_outputs) == 1:
        return nodes, tensors
    stride = strides[0]
    crops = [_crop(kernel[i], strides[i], pads[i], pads[i + 2], out_pad[i]) for i in (0, 1)]
    shuffled = y if not any(crops) else f"{base}_d2s"
    nodes.append(helper.make_node("Concat", phase_outputs, [f"{base}_phases"], axis=1,
                                  name=f"{base}_concat"))
    nodes.append(helper.make_node("DepthToSpace", [f"{base}_phases"], [shuffled],
                                  blocksize=stride, mode="DCR", name=f"{base}_d2s"))
    if any(crops):
        big = np.iinfo(np.int64).max
        starts = numpy_helper.from_array(np.zeros(2, np.int64), f"{base}_crop_starts")
        ends = numpy_helper.from_array(np.array([-c if c else big for c in crops], np.int64),
                                       f"{base}_crop_ends")
        crop_axes = numpy_helper.from_array(np.array([2, 3], np.int64), f"{base}_crop_axes")
        tensors += [starts, ends, crop_axes]
        nodes.append(helper.make_node("Slice", [shuffled, starts.name, ends.name,
                                                crop_axes.name], [y], name=f"{base}_crop"))
    return nodes, tensors


def rewrite_model(model: onnx.ModelProto) -> dict[str, Any]:
    """Rewrite every ConvTranspose of ``model``'s main graph in place. Returns
    ``{"stride1": n, "strided": m, "kept": [reasons]}``."""
    graph = model.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    report: dict[str, Any] = {"stride1": 0, "strided": 0, "kept": []}
    new_nodes: list[onnx.NodeProto] = []
    used: set[str] = set()
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    outputs = {value.name for value in graph.output}
    absorbed: set[int] = set()       # ReLU nodes moved into a rewrite (by index)
    for index, node in enumerate(graph.node):
        if index in absorbed:
            continue
        if node.op_type != "ConvTranspose" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        reason = why_not(node, weights)
        if reason is not None:
            report["kept"].append(f"{node.name or index}: {reason}")
            new_nodes.append(node)
            continue
        users = consumers.get(node.output[0], [])
        relu = graph.node[users[0]] if len(users) == 1 else None
        if relu is None or relu.op_type != "Relu" or relu.domain not in ("", "ai.onnx") \
                or node.output[0] in outputs:
            relu = None
        else:
            absorbed.add(users[0])
        nodes, tensors = _rewrite_node(node, weights, index, relu)
        new_nodes += nodes
        graph.initializer.extend(tensors)
        used.add(node.input[1])
        strided = any(int(s) > 1 for s in _attrs(node).get("strides", [1, 1]))
        report["strided" if strided else "stride1"] += 1
    del graph.node[:]
    graph.node.extend(new_nodes)
    still_used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name not in used or t.name in still_used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return report


def rewrite_file(path: Path) -> dict[str, Any]:
    """Rewrite an ONNX file in place (self-contained files only) and check the result
    (``export.onnx_export.check_onnx``); returns the report."""
    from export.onnx_export import check_onnx

    model = onnx.load(str(path))
    report = rewrite_model(model)
    if report["stride1"] or report["strided"]:
        onnx.save_model(model, str(path))
        check_onnx(path)
    return report
