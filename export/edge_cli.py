"""``python -m export`` options for CPU (edge) exports: the Conv rewrite, INT8 and BF16."""

from __future__ import annotations

import argparse

from export.int8 import AUTO_CALIBRATIONS, FORMATS, Int8Options
from runtime.errors import S2IError
from runtime.model.precision import BF16_REASON


def add_edge_args(parser: argparse.ArgumentParser) -> None:
    defaults = Int8Options()
    g = parser.add_argument_group("CPU speed (docs/EXPORT.md: Conv rewrite, INT8)")
    g.add_argument("--no-conv-rewrite", action="store_true",
                   help="keep the generator's ConvTranspose layers (default: rewrite them "
                        "exactly as Conv / Conv + DepthToSpace)")
    g.add_argument("--int8", action="store_true",
                   help="also write INT8 encoder and generator graphs (ONNX Runtime CPU), "
                        "calibrated on real store windows and gated against FP32")
    g.add_argument("--calibration-store", default=None, metavar="STORE",
                   help="store to calibrate on (default: the checkpoint's training store)")
    g.add_argument("--calibration-windows", type=int, default=defaults.windows, metavar="N",
                   help=f"train-split windows to calibrate on (default {defaults.windows})")
    g.add_argument("--int8-calibration", default=defaults.calibration,
                   metavar="auto|minmax|percentile:P",
                   help="how activation ranges are set (default auto: each of "
                        f"{', '.join(AUTO_CALIBRATIONS)} is tried and the one closest to FP32 "
                        "on other train windows is kept)")
    g.add_argument("--int8-format", choices=FORMATS, default=defaults.format,
                   help=f"quantized graph form (default {defaults.format})")
    g.add_argument("--int8-per-tensor", action="store_true",
                   help="one weight scale per tensor (default: per output channel)")
    g.add_argument("--no-int8-gates", action="store_true",
                   help="keep the INT8 graphs without measuring the quality gates")
    g.add_argument("--bf16", action="store_true",
                   help="BF16 graphs: refused on this runtime (says why)")


def int8_options(args: argparse.Namespace) -> Int8Options | None:
    if args.bf16:
        raise S2IError(f"--bf16: {BF16_REASON}")
    if not args.int8:
        return None
    options = Int8Options(store=args.calibration_store, windows=args.calibration_windows,
                          calibration=args.int8_calibration, format=args.int8_format,
                          per_channel=not args.int8_per_tensor, gates=not args.no_int8_gates)
    options.check()
    return options
