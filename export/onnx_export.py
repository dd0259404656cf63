"""Write one ``nn.Module`` as an ONNX file and check it (checker, ops, names, shapes)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from torch import nn

from runtime.errors import S2IError

DEFAULT_OPSET = 18
# ops that must never reach an inference graph: training-mode dropout, random draws and
# unfolded BatchNorm (TensorRT rejects the first two; the last should be folded away)
FORBIDDEN_OPS = frozenset({"Dropout", "BatchNormalization", "RandomUniform",
                           "RandomUniformLike", "RandomNormal", "RandomNormalLike",
                           "Bernoulli", "Multinomial"})
ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
               onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}


def write_onnx(graph: nn.Module, example: tuple[torch.Tensor, ...], path: Path,
               dynamic: dict[str, str], opset: int = DEFAULT_OPSET,
               max_batch: int = 4096, metadata: dict[str, str] | None = None) -> str:
    """Export ``graph`` (with ``input_names``/``output_names`` attributes) to ``path`` and
    check it; returns the exporter used. The exporter may write a higher opset than asked
    for (torch.export has a minimum); that is refused with ``S2IError``, and the opset it
    really wrote (``model_opset``) is what the manifest records.

    ``dynamic`` maps input names to the name of their dynamic axis 0 (e.g. ``"batch"``);
    inputs sharing a name share one symbolic size. ``metadata`` goes into the file's
    ``metadata_props`` (the S2I stamp: ``runtime.model.manifest.export_stamp``). Uses the
    torch.export-based exporter (the default since torch 2.9) and falls back to the
    TorchScript exporter (deprecated, still in torch 2.13) if that fails. The graph is
    written as one self-contained file.
    """
    graph = graph.eval()
    try:
        model = _export_dynamo(graph, example, dynamic, opset, max_batch)
        exporter = "torch.export"
    except Exception as dynamo_error:  # torch.export raises many types; try the old route
        try:
            model = _export_torchscript(graph, example, dynamic, opset, path)
        except Exception:
            raise dynamo_error from None
        exporter = "torchscript"
    written = model_opset(model)
    if written > opset:
        raise S2IError(f"--opset {opset} not supported by this exporter ({exporter}); it "
                       f"wrote opset {written}: ask for --opset {written} or higher")
    _fill_output_sizes(model)
    _name_dynamic_outputs(model, dynamic)
    set_metadata(model, metadata or {})
    onnx.save_model(model, str(path))
    check_onnx(path)
    return exporter


def set_metadata(model: onnx.ModelProto, metadata: dict[str, str]) -> None:
    """Set ``metadata_props`` entries (replacing those with the same keys)."""
    kept = [p for p in model.metadata_props if p.key not in metadata]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)


def stamp_onnx_file(path: Path, metadata: dict[str, str]) -> None:
    """Stamp an ONNX file written by another tool (a quantizer, a rewrite): set its
    ``metadata_props`` in place. Hash the file (``export.manifest.onnx_entry``) afterwards."""
    model = onnx.load(str(path), load_external_data=False)
    set_metadata(model, metadata)
    onnx.save_model(model, str(path))


def model_opset(model: onnx.ModelProto | Path) -> int:
    """The default-domain (``ai.onnx``) opset a model really uses (0 if none is listed)."""
    if isinstance(model, Path):
        model = onnx.load(str(model), load_external_data=False)
    return max((int(entry.version) for entry in model.opset_import
                if entry.domain in ("", "ai.onnx")), default=0)


def _export_dynamo(graph: nn.Module, example: tuple[torch.Tensor, ...], dynamic: dict[str, str],
                   opset: int, max_batch: int) -> onnx.ModelProto:
    dims = {name: torch.export.Dim(name, min=1, max=max_batch) for name in set(dynamic.values())}
    dynamic_shapes = tuple({0: dims[dynamic[n]]} if n in dynamic else None
                           for n in graph.input_names)
    with _quiet():
        program = torch.onnx.export(
            graph, example, input_names=graph.input_names, output_names=graph.output_names,
            opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes,
            external_data=False, optimize=True, verbose=False)
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    return program.model_proto


def _export_torchscript(graph: nn.Module, example: tuple[torch.Tensor, ...],
                        dynamic: dict[str, str], opset: int, path: Path) -> onnx.ModelProto:
    axes = {name: {0: axis} for name, axis in dynamic.items() if name in graph.input_names}
    with _quiet():
        torch.onnx.export(graph, example, str(path), input_names=graph.input_names,
                          output_names=graph.output_names, opset_version=opset, dynamo=False,
                          dynamic_axes=axes, do_constant_folding=True)
    return onnx.load(str(path))


@contextlib.contextmanager
def _quiet():  # type: ignore[no-untyped-def]
    """The exporters print progress and warnings; the CLI prints its own summary."""
    with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()),
          quiet_logger("torch.onnx"), quiet_logger("torch.export"),
          quiet_logger("onnxscript")):
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def quiet_logger(name: str):  # type: ignore[no-untyped-def]
    """Errors only from logger ``name`` (``""``: the root logger) inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _fill_output_sizes(model: onnx.ModelProto) -> None:
    """Write the output sizes ONNX Runtime infers into the outputs' declared shapes. The
    TorchScript exporter (the fallback) can leave a fixed size symbolic (``encoder_audio``'s
    embedding came out ``[s0, s1]``, which ``_name_dynamic_outputs`` then named ``batch``):
    the manifest would announce it as dynamic and the runtime, whose session infers 64,
    would refuse the export on opening."""
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(),
                                               providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - a refinement only; check_onnx and parity still run
        return
    for value, known in zip(model.graph.output, session.get_outputs(), strict=True):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(known.shape):
            continue
        for dim, size in zip(dims, known.shape, strict=True):
            if isinstance(size, int) and not dim.HasField("dim_value"):
                dim.dim_value = size


def _name_dynamic_outputs(model: onnx.ModelProto, dynamic: dict[str, str]) -> None:
    """Give every symbolic dim the axis name the runtime expects (exporters invent names
    such as ``s0`` or ``Castimage_dim_0``): inputs by ``dynamic``; outputs inherit them
    (or, with one dynamic axis in the graph, any other symbolic dim is that axis)."""
    renames: dict[str, str] = {}
    for value in model.graph.input:
        dim = value.type.tensor_type.shape.dim
        if value.name in dynamic and dim and dim[0].dim_param:
            renames[dim[0].dim_param] = dynamic[value.name]
    axes = set(dynamic.values())
    only_axis = next(iter(axes)) if len(axes) == 1 else None
    for value in [*model.graph.input, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
            elif dim.dim_param and dim.dim_param not in axes and only_axis:
                dim.dim_param = only_axis


def check_onnx(path: Path) -> None:
    """Full ONNX checker (with shape inference) plus: no dropout/random/BatchNorm ops."""
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    bad = sorted({node.op_type for node in model.graph.node} & FORBIDDEN_OPS)
    if bad:
        raise ValueError(f"{path.name} holds ops an inference graph must not have: {bad}")


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """``{"inputs": [{"name","shape","dtype"}], "outputs": [...]}`` read from the graph."""
    model = onnx.load(str(path), load_external_data=False)

    def one(value: onnx.ValueInfoProto) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
        return {"name": value.name, "shape": shape,
                "dtype": ONNX_DTYPES.get(tensor.elem_type, str(tensor.elem_type))}

    return {"inputs": [one(v) for v in model.graph.input],
            "outputs": [one(v) for v in model.graph.output]}


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
