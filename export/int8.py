"""INT8 graphs for the CPU: static quantization calibrated on real store windows, with gates.

``export_int8`` quantizes the (Conv-rewritten) FP32 encoder and generator with ONNX Runtime's
static quantizer (``onnxruntime.quantization.quantize_static``): weights INT8, activations
UINT8, ranges measured on windows of the training store's train split, the generator's
calibration inputs being the FP32 encoder's embeddings of those windows and masks drawn as the
runtime draws them (``runtime.model.masks.draw_masks``).

How the ranges are set matters more than anything else here. A few activations of the trained
generator lie far above the rest; MinMax ranges stretch to them and leave the bulk a few
levels (demo: 28.5 dB PSNR against FP32, and keeping any one layer, or the first or last 20
of 24, in FP32 changed that by < 1.3 dB), while percentile ranges clip them (37.3 dB at
99.9%). ``calibration="auto"`` therefore quantizes with each of ``AUTO_CALIBRATIONS`` and keeps
the one whose images are closest to FP32 on other train windows (never the gate's windows).
The quality gates (``export.quality``) then compare the INT8 chain with the FP32 chain on
held-out windows; an INT8 export that misses them is not kept (the FP32 graphs stay) and the
manifest says why.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.manifest import onnx_entry
from export.onnx_export import quiet_logger, stamp_onnx_file
from export.parity import cpu_session
from runtime.errors import S2IError
from runtime.model.masks import draw_masks
from runtime.model.precision import model_file, model_key

FORMATS = ("qoperator", "qdq")
GRAPHS = ("encoder", "generator")
AUTO_CALIBRATIONS = ("minmax", "percentile:99.99", "percentile:99.9", "percentile:99.5")
STRIDE = 4      # calibration batches run before their ranges are merged (bounds the memory)


@dataclass
class Int8Options:
    """``python -m export --int8`` settings, its flag group (defaults measured on this
    project's CPU machine: docs/EXPORT.md, "INT8"); the fields without a flag are set from
    Python only."""

    store: str | None = field(default=None, metadata={
        "flag": "--calibration-store", "metavar": "STORE",
        "help": "store to calibrate on (default: the checkpoint's training store)"})
    windows: int = field(default=64, metadata={
        "flag": "--calibration-windows", "metavar": "N",
        "help": "train-split windows to calibrate on"})
    seed: int = field(default=0, metadata={"cli": False})
    calibration: str = field(default="auto", metadata={
        "flag": "--int8-calibration", "metavar": "auto|minmax|percentile:P",
        "help": "how activation ranges are set (auto: each of "
                f"{', '.join(AUTO_CALIBRATIONS)} is tried and the one closest to FP32 on "
                "other train windows is kept)"})
    # other train windows on which "auto" compares them
    selection_windows: int = field(default=32, metadata={"cli": False})
    format: str = field(default="qoperator", metadata={
        "flag": "--int8-format", "choices": FORMATS, "help": "quantized graph form"})
    per_channel: bool = field(default=True, metadata={
        "flag": "--int8-per-tensor", "switch": True,
        "help": "one weight scale per tensor (default: per output channel)"})
    gate_windows: int = field(default=64, metadata={"cli": False})   # held-out: PSNR, max error
    mc_samples: int = field(default=4, metadata={"cli": False})      # per test sound: coherence
    min_psnr_db: float = field(default=25.0, metadata={"cli": False})   # mean PSNR vs FP32
    max_drop_points: float = field(default=2.0, metadata={"cli": False})  # coherence, informativity
    gates: bool = field(default=True, metadata={
        "flag": "--no-int8-gates", "switch": True,
        "help": "keep the INT8 graphs without measuring the quality gates"})

    def check(self) -> None:
        if self.format not in FORMATS:
            raise S2IError(f"--int8-format must be one of {', '.join(FORMATS)}, "
                           f"got {self.format!r}")
        if self.windows < 1 or self.gate_windows < 1 or self.mc_samples < 1:
            raise S2IError("--calibration-windows, gate windows and MC samples must be >= 1")
        if self.calibration != "auto":
            calibration_method(self.calibration)
        elif self.selection_windows < 1:
            raise S2IError("--int8-calibration auto needs selection windows >= 1")

    def candidates(self) -> tuple[str, ...]:
        return AUTO_CALIBRATIONS if self.calibration == "auto" else (self.calibration,)


def calibration_method(name: str) -> tuple[Any, dict[str, Any]]:
    """``minmax`` or ``percentile:P`` (P in (50, 100)) -> ORT's calibration method and its
    extra options; anything else is one clear error."""
    from onnxruntime.quantization import CalibrationMethod

    if name == "minmax":
        return CalibrationMethod.MinMax, {}
    kind, _, value = name.partition(":")
    try:
        percentile = float(value)
    except ValueError:
        percentile = -1.0
    if kind != "percentile" or not 50.0 < percentile < 100.0:
        raise S2IError(f"--int8-calibration must be auto, minmax or percentile:P with "
                       f"50 < P < 100 (e.g. percentile:99.9), got {name!r}")
    return CalibrationMethod.Percentile, {"CalibPercentile": percentile}


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


def _reader(feeds: list[dict[str, np.ndarray]]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self._items: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._items, None)

        def rewind(self) -> None:
            self._items = iter(feeds)

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._items = iter(feeds[start_index:end_index])

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


def quantize(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], options: Int8Options,
             calibration: str, fp32_nodes: list[str]) -> None:
    """Static INT8 quantization of ``src`` into ``dst``, ranges from ``feeds`` by
    ``calibration`` (``calibration_method``); ``fp32_nodes`` (its ``output_layer``) stay
    FP32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fmt = QuantFormat.QOperator if options.format == "qoperator" else QuantFormat.QDQ
    method, extra = calibration_method(calibration)
    # STRIDE batches at a time, merged (MinMax: min/max; percentile: histograms): without it
    # the calibrator holds every intermediate tensor of every batch at once
    stride = STRIDE if len(feeds) % STRIDE == 0 else 1
    # root-logger hints; histogram progress prints
    with quiet_logger(""), contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(src), str(dst), _reader(feeds), quant_format=fmt,
                        per_channel=options.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method,
                        nodes_to_exclude=fp32_nodes,
                        extra_options={**extra, "CalibStridedMinMax": stride})
    for leftover in dst.parent.glob("*-inferred.onnx"):   # older quantizers leave this
        leftover.unlink()


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


def choose_calibration(folder: Path, files: dict[str, Path], dropout: list[dict[str, Any]],
                       feeds: dict[str, list[dict[str, np.ndarray]]], windows: np.ndarray,
                       fp32_nodes: dict[str, list[str]], options: Int8Options,
                       log: Callable[[str], None]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Quantize both graphs with each of ``options.candidates()``; keep the one whose images
    are closest to FP32 (least mean squared error, i.e. highest pooled PSNR: a few badly
    clipped images count against a candidate) on ``windows``, masks fixed for all. Returns
    the kept files and a record (each candidate's figures, the choice)."""
    from export.quality import OrtChain, chain_images, image_errors

    candidates = options.candidates()
    masks = draw_masks(dropout, len(windows), np.random.default_rng(options.seed + 3))
    fp32 = OrtChain(files["encoder"], files["generator"], dropout)
    reference = chain_images(fp32, windows, masks) if len(candidates) > 1 else None
    figures: dict[str, dict[str, float]] = {}
    chosen, best = candidates[0], {}
    for i, name in enumerate(candidates):
        trial = {graph: folder / f"{graph}.int8.{i}.onnx" for graph in GRAPHS}
        for graph in GRAPHS:
            quantize(files[graph], trial[graph], feeds[graph], options, name,
                     fp32_nodes[graph])
        if reference is None:
            best = trial
            break
        errors = image_errors(reference, chain_images(OrtChain(trial["encoder"],
                                                               trial["generator"], dropout),
                                                      windows, masks))
        figures[name] = {k: errors[k] for k in ("psnr_db_pooled", "psnr_db_mean", "psnr_db_min",
                                                "max_error_grey_levels")}
        better = not best or errors["psnr_db_pooled"] > figures[chosen]["psnr_db_pooled"]
        for file in (best if better else trial).values():
            file.unlink()
        if better:
            chosen, best = name, trial
    if figures:
        log("INT8 calibration " + ", ".join(f"{n} {f['psnr_db_pooled']:.1f} dB"
                                             for n, f in figures.items())
            + f" (pooled PSNR vs FP32 on {len(windows)} other train windows) -> {chosen}")
    out = {graph: folder / model_file(graph, "int8") for graph in GRAPHS}
    for graph in GRAPHS:
        best[graph].replace(out[graph])
    return out, {"method": chosen, "candidates": figures}


def export_int8(folder: Path, files: dict[str, Path], dropout: list[dict[str, Any]],
                state: dict[str, Any], options: Int8Options, log: Callable[[str], None],
                stamp: dict[str, str] | None = None
                ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Write ``encoder.int8.onnx`` and ``generator.int8.onnx`` into ``folder`` and measure
    the gates. Returns the manifest ``models`` entries (none when the gates fail) and the
    manifest's ``int8`` record (settings, calibration set and choice, gates, kept or why
    not)."""
    from export.quality import gate_report
    from trainer.data.store import Store

    options.check()
    path = store_path(state, options)
    store = Store(path)
    split = "train" if "train" in store.splits else store.splits[0]
    spectrograms, picked = store.windows(split, options.windows, options.seed)
    log(f"INT8 calibration: {len(spectrograms)} windows of {path} ({split} split)")
    feeds = calibration_feeds(files["encoder"], spectrograms, dropout, options.seed)
    selection: dict[str, Any] = {}
    windows = spectrograms[:0]
    if len(options.candidates()) > 1:
        # the windows after the calibration ones in the same permutation; a store too small
        # for both compares on the calibration windows (recorded)
        skip = options.windows if len(store.split(split)) > options.windows else 0
        windows, chosen_from = store.windows(split, options.selection_windows,
                                             options.seed, skip=skip)
        selection = {"split": split, "windows": int(len(windows)),
                     "positions": [int(i) for i in chosen_from],
                     "same_as_calibration": skip == 0,
                     "masks": f"runtime.model.masks.draw_masks, seed {options.seed + 3}"}
    fp32_nodes = {graph: output_layer(files[graph]) for graph in GRAPHS}
    out, choice = choose_calibration(folder, files, dropout, feeds, windows, fp32_nodes,
                                     options, log)
    for graph in GRAPHS:
        stamp_onnx_file(out[graph], stamp or {})   # the S2I stamp the runtime checks
        log(f"wrote {out[graph].name} ({out[graph].stat().st_size / 1e6:.1f} MB)")
    record: dict[str, Any] = {
        "precision": "int8", "settings": asdict(options),
        "quantizer": {"tool": "onnxruntime.quantization.quantize_static",
                      "format": options.format, "per_channel": options.per_channel,
                      "weights": "int8", "activations": "uint8",
                      "calibration": choice["method"],
                      "fp32_output_layer": fp32_nodes},
        "calibration": {"store": str(path.resolve()), "store_fingerprint": store.fingerprint,
                        "split": split, "windows": int(len(spectrograms)),
                        "positions": [int(i) for i in picked],
                        "masks": f"runtime.model.masks.draw_masks, seed {options.seed}",
                        "method": choice["method"],
                        **({"selection": {**selection, "psnr_vs_fp32": choice["candidates"]}}
                           if selection else {})},
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
    models = {model_key(graph, "int8"): {**onnx_entry(file, "int8"),
                                         "quantized_from": files[graph].name}
              for graph, file in out.items()}
    return models, record
