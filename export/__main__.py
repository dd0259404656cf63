"""``python -m export [RUN_OR_CHECKPOINT] [--fp16] [--out DIR] [--opset N] [--batch-sizes ...]``

Exports a trained translator (a run folder's newest GAN checkpoint, or a checkpoint file)
to ONNX (+FP16 with ``--fp16``), checks ONNX Runtime against PyTorch, builds TensorRT
engines where TensorRT and a GPU exist, and writes the manifest the runtime loads.
``python -m export --verify EXPORT_DIR`` re-runs parity of every file of an existing export
against its checkpoint (exit 1 on any mismatch).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.edge_cli import add_edge_args, int8_options
from export.onnx_export import DEFAULT_OPSET
from export.translator import DEFAULT_BATCH_SIZES, export_translator
from runtime.errors import S2IError, run_cli

DEFAULT_RUN = Path("runs/demo")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[1])
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_RUN,
                        help=f"run folder or GAN checkpoint (default: {DEFAULT_RUN})")
    parser.add_argument("--out", type=Path, default=None,
                        help="export folder (default: RUN/export; for a checkpoint file "
                             "RUN/checkpoints/x.pt -> RUN/export)")
    parser.add_argument("--fp16", action="store_true",
                        help="also write FP16 graphs (and engines) with FP32 inputs/outputs")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES),
                        help="batch sizes the runtime will use; TensorRT profile min/opt/max "
                             f"(default {' '.join(map(str, DEFAULT_BATCH_SIZES))})")
    parser.add_argument("--no-fused", action="store_true",
                        help="skip the fused translator graph (spectrogram + K masks -> "
                             "images, mean, uncertainty)")
    parser.add_argument("--no-audio-in", action="store_true",
                        help="skip the audio-in graphs (encoder_audio, translator_audio: the "
                             "log-mel front end inside the graph, mono audio at the model "
                             "rate in)")
    parser.add_argument("--no-tensorrt", action="store_true", help="do not build engines")
    parser.add_argument("--timing-cache", type=Path, default=None,
                        help="TensorRT timing cache file (default ~/.cache/s2i/)")
    parser.add_argument("--verify", type=Path, default=None, metavar="EXPORT_DIR",
                        help="re-run parity of every file of EXPORT_DIR against the checkpoint "
                             "its manifest names; print a line per file, exit 1 on a mismatch")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="with --verify: the checkpoint to compare with (default: the "
                             "manifest's checkpoint path; its sha256 must match)")
    add_edge_args(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.verify is not None:
        from export.verify import verify_export

        return 0 if verify_export(args.verify, args.checkpoint) else 1
    if not args.source.exists():
        hint = " (train the demo first: python -m trainer)" if args.source == DEFAULT_RUN else ""
        raise S2IError(f"{args.source} not found: expected a run folder or a GAN "
                       f"checkpoint{hint}")
    export_translator(args.source, args.out, fp16=args.fp16, opset=args.opset,
                      batch_sizes=tuple(args.batch_sizes), fused=not args.no_fused,
                      tensorrt=not args.no_tensorrt, timing_cache=args.timing_cache,
                      conv_rewrite=not args.no_conv_rewrite, int8=int8_options(args),
                      audio_in=not args.no_audio_in,
                      log=print)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
