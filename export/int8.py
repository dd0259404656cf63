"""INT8 graphs for the CPU: static quantization calibrated on real store windows, with gates.

``export_int8`` quantizes the (Conv-rewritten) FP32 encoder and generator with ONNX Runtime's
static quantizer (``onnxruntime.quantization.quantize_static``): weights INT8, activations
UINT8, ranges (MinMax) measured on windows of the training store's train split, the
generator's calibration inputs being the FP32 encoder's embeddings of those windows and masks
drawn as the runtime draws them (``runtime.masks.draw_masks``). The quality gates
(``export.quality``) then compare the INT8 chain with the FP32 chain on held-out windows; an
INT8 export that misses them is not kept (the FP32 graphs stay) and the manifest says why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import onnx_entry
from export.onnx_export import quiet_logger, stamp_onnx_file
from export.parity import cpu_session
from runtime.errors import S2IError
from runtime.frontend import from_uint8
from runtime.masks import draw_masks

FORMATS = ("qoperator", "qdq")
GRAPHS = ("encoder", "generator")


@dataclass
class Int8Options:
    """``python -m export --int8`` settings (defaults measured on this project's CPU machine:
    docs/EXPORT.md, "INT8")."""

    store: str | None = None        # calibration store; None: the checkpoint's training store
    windows: int = 64               # calibration windows from the train split
    seed: int = 0
    format: str = "qoperator"       # QOperator (QLinearConv...) or QDQ
    per_channel: bool = True        # per-output-channel weight scales
    gate_windows: int = 64          # held-out windows for PSNR / max error
    mc_samples: int = 4             # MC samples per test sound for coherence
    min_psnr_db: float = 25.0       # mean per-image PSNR, INT8 vs FP32
    max_drop_points: float = 2.0    # coherence / informativity, INT8 vs FP32
    gates: bool = True              # measure the gates (False: keep INT8 unmeasured)

    def check(self) -> None:
        if self.format not in FORMATS:
            raise S2IError(f"--int8-format must be one of {', '.join(FORMATS)}, "
                           f"got {self.format!r}")
        if self.windows < 1 or self.gate_windows < 1 or self.mc_samples < 1:
            raise S2IError("--calibration-windows, gate windows and MC samples must be >= 1")


def store_path(state: dict[str, Any], options: Int8Options) -> Path:
    """The calibration store: ``options.store`` or the store the checkpoint was trained on."""
    given = options.store or (state.get("store") or {}).get("path")
    if not given:
        raise S2IError("INT8 calibration needs real windows: this checkpoint records no "
                       "training store; give one with --calibration-store STORE")
    path = Path(given)
    if not (path / "manifest.json").is_file():
        raise S2IError(f"calibration store {path} not found (expected a dataset store "
                       "folder with manifest.json); give one with --calibration-store")
    return path


def store_windows(store: Any, split: str, count: int, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``count`` windows of ``split`` (evenly spread over a seeded permutation), as the
    runtime feeds them: float32 ``[N,1,128,100]`` in [-1, 1]; and their positions."""
    arrays = store.split(split)
    n = len(arrays)
    picked = np.sort(np.random.default_rng(seed).permutation(n)[:min(count, n)])
    spectrograms = from_uint8(arrays.spectrograms[picked])[:, None]
    return np.ascontiguousarray(spectrograms, dtype=np.float32), picked


def _reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

        def rewind(self) -> None:
            self._items = iter(feeds)

    return _Feeds()


def output_layer(path: Path) -> list[str]:
    """Names of the nodes between the graph's outputs and the last convolutions (those
    included): the output layer, kept in FP32. On the trained demo, quantizing the
    generator's RGB layer cost ~20 dB of PSNR (a uniform shift of ~19 grey levels) and
    keeping it FP32 gave back all but ~1.6 grey levels; it is a small share of the work."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    todo = [value.name for value in graph.output]
    seen: set[str] = set()
    names: list[str] = []
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        names.append(node.name)
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            todo += list(node.input)
    return [name for name in names if name]


def quantize(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], options: Int8Options
             ) -> list[str]:
    """Static INT8 quantization of ``src`` into ``dst``, calibrated (MinMax) on ``feeds``;
    the output layer stays FP32 (``output_layer``). Returns the names of the FP32 nodes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    fmt = QuantFormat.QOperator if options.format == "qoperator" else QuantFormat.QDQ
    kept = output_layer(src)
    with quiet_logger(""):      # the quantizer logs a hint on the root logger every call
        quantize_static(str(src), str(dst), _reader(feeds), quant_format=fmt,
                        per_channel=options.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=kept)
    # (no CalibMaxIntermediateOutputs: onnxruntime 1.32 drops, not merges, what it clears;
    # MinMax keeps only per-tensor ReduceMin/ReduceMax values per batch anyway)
    for leftover in dst.parent.glob("*-inferred.onnx"):   # older quantizers leave this
        leftover.unlink()
    return kept


def _batches(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def calibration_feeds(encoder_fp32: Path, spectrograms: np.ndarray,
                      dropout: list[dict[str, Any]], seed: int, batch: int = 4
                      ) -> dict[str, list[dict[str, np.ndarray]]]:
    """Calibration inputs: spectrogram batches for the encoder; for the generator, the FP32
    encoder's embeddings of the same windows and masks drawn as at run time."""
    session = cpu_session(encoder_fp32)
    rng = np.random.default_rng(seed)
    encoder, generator = [], []
    for part in _batches(len(spectrograms), batch):
        x = spectrograms[part]
        (z,) = session.run(None, {"spectrogram": x})
        masks = draw_masks(dropout, len(x), rng)
        encoder.append({"spectrogram": x})
        generator.append({"embedding": z, **{s["input"]: m for s, m in zip(dropout, masks,
                                                                        strict=True)}})
    return {"encoder": encoder, "generator": generator}


def export_int8(folder: Path, files: dict[str, Path], dropout: list[dict[str, Any]],
                state: dict[str, Any], options: Int8Options, log: Callable[[str], None],
                stamp: dict[str, str] | None = None
                ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Write ``encoder.int8.onnx`` and ``generator.int8.onnx`` into ``folder`` and measure
    the gates. Returns the manifest ``models`` entries (none when the gates fail) and the
    manifest's ``int8`` record (settings, calibration set, gates, kept or why not)."""
    from export.quality import gate_report
    from trainer.data.store import Store

    options.check()
    path = store_path(state, options)
    store = Store(path)
    split = "train" if "train" in store.splits else store.splits[0]
    spectrograms, picked = store_windows(store, split, options.windows, options.seed)
    log(f"INT8 calibration: {len(spectrograms)} windows of {path} ({split} split)")
    feeds = calibration_feeds(files["encoder"], spectrograms, dropout, options.seed)
    out: dict[str, Path] = {}
    fp32_nodes: dict[str, list[str]] = {}
    for graph in GRAPHS:
        out[graph] = folder / f"{graph}.int8.onnx"
        fp32_nodes[graph] = quantize(files[graph], out[graph], feeds[graph], options)
        stamp_onnx_file(out[graph], stamp or {})   # the S2I stamp the runtime checks
        log(f"wrote {out[graph].name} ({out[graph].stat().st_size / 1e6:.1f} MB)")
    record: dict[str, Any] = {
        "precision": "int8", "settings": asdict(options),
        "quantizer": {"tool": "onnxruntime.quantization.quantize_static",
                      "format": options.format, "per_channel": options.per_channel,
                      "weights": "int8", "activations": "uint8", "calibration": "MinMax",
                      "fp32_output_layer": fp32_nodes},
        "calibration": {"store": str(path.resolve()), "store_fingerprint": store.fingerprint,
                        "split": split, "windows": int(len(spectrograms)),
                        "positions": [int(i) for i in picked],
                        "masks": f"runtime.masks.draw_masks, seed {options.seed}"},
    }
    if options.gates:
        gates = gate_report(files, out, dropout, store, options, log)
        record["gates"] = gates
        if not gates["passed"]:
            for file in out.values():
                file.unlink()
            record["kept"] = False
            record["reason"] = gates["reason"]
            log(f"INT8 graphs NOT kept: {gates['reason']}; the export keeps FP32")
            return {}, record
    record["kept"] = True
    models = {f"{graph}_int8": {**onnx_entry(file, "int8"), "quantized_from": files[graph].name}
              for graph, file in out.items()}
    return models, record
