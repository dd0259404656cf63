"""Command-line options shared by ``s2i-stream`` and ``s2i-serve``: the model, publishing and
batching, and opening the ``Pipeline`` they describe."""

from __future__ import annotations

import argparse
from typing import Any

from runtime.errors import S2IError
from runtime.model.precision import FEATURES, GPU_BACKENDS, PRECISIONS
from runtime.model.shipped import TRAINED_EXPORT, default_export, default_precision
from runtime.serve.pipeline import Pipeline
from runtime.wire.protocol import DEFAULT_TOPIC, ENCODINGS

DEFAULT_EXPORT = TRAINED_EXPORT
# (max batch, max wait ms) per backend class; see docs/RUNTIME.md "Batching".
BATCHING_DEFAULTS = {"cpu": (64, 10.0), "gpu": (512, 5.0)}


def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and publishing")
    g.add_argument("--export", default=default_export(),
                   help=f"export folder (default: {DEFAULT_EXPORT} when it exists, else the "
                        "demo model shipped with S2I)")
    g.add_argument("--backend", default="auto",
                   help="auto | tensorrt | onnxruntime-cuda | onnxruntime-cpu (default: auto)")
    g.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="fp32 (default; fp16 for the shipped demo model, which holds FP16 "
                        "graphs only), fp16, or int8 (onnxruntime-cpu; export --int8)")
    g.add_argument("--features", default="auto", choices=FEATURES,
                   help="where the log-mel front end runs: graph (inside the model: the "
                        "export's audio-in graphs), host (runtime/frontend.py, numpy), or "
                        "auto (default: graph when the export has it for this backend and "
                        "precision)")
    g.add_argument("--hop", type=float, default=1.0,
                   help="seconds between windows (1-s window; down to 0.25 or less)")
    g.add_argument("--samples", type=int, default=1,
                   help="K images per window, each with fresh dropout masks (default: 1)")
    g.add_argument("--uncertainty", action="store_true",
                   help="also send the per-pixel std across the K samples")
    g.add_argument("--encoding", default="png", choices=ENCODINGS,
                   help="image payloads: png (lossless), jpeg (lossy, cheapest to send "
                        "compressed) or raw (no encoding cost, ~27 KB per 96x96 image)")
    g.add_argument("--encoding-level", type=int, default=None, metavar="N",
                   help="png: compression level 0-9 (default 1); jpeg: quality 1-95 "
                        "(default 85)")
    g.add_argument("--seed", type=int, default=None, help="seed for the dropout masks")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    g.add_argument("--cluster", default=None, metavar="ADDRESS[/APP]",
                   help="run the model in a Ray Serve deployment instead of here: the Ray "
                        "address (HEAD:6379, or auto) and application name (default s2i); "
                        "--export/--backend/--precision/--threads are then the deployment's "
                        "(deploy/serve.yaml, docs/SCALING.md)")
    g.add_argument("--pub", default="tcp://127.0.0.1:5556",
                   help="PUB address to bind (default: tcp://127.0.0.1:5556, this machine "
                        "only; e.g. tcp://0.0.0.0:5556 opens it to the network)")
    g.add_argument("--topic", default=DEFAULT_TOPIC)
    g.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                   help="start only once N subscriptions have arrived (no frame is missed)")


def add_batching_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("batching across streams")
    cpu, gpu = BATCHING_DEFAULTS["cpu"], BATCHING_DEFAULTS["gpu"]
    g.add_argument("--max-batch", type=int, default=None, metavar="B",
                   help=f"most windows in one model call (default: {cpu[0]} on CPU, "
                        f"{gpu[0]} on GPU backends)")
    g.add_argument("--max-wait-ms", type=float, default=None, metavar="MS",
                   help=f"how long a due window may wait for company (default: {cpu[1]:g} ms "
                        f"on CPU, {gpu[1]:g} ms on GPU backends)")
    g.add_argument("--encode-threads", type=int, default=2, metavar="N",
                   help="threads encoding PNG payloads (default: 2)")


def batching(args: argparse.Namespace, backend: str) -> tuple[int, float]:
    """(max batch, max wait in seconds) from the options or the backend's defaults."""
    default_batch, default_wait = BATCHING_DEFAULTS["gpu" if backend in GPU_BACKENDS else "cpu"]
    max_batch = default_batch if args.max_batch is None else args.max_batch
    wait_ms = default_wait if args.max_wait_ms is None else args.max_wait_ms
    if max_batch < 1:
        raise S2IError(f"--max-batch must be at least 1, got {max_batch}")
    if not 0 <= wait_ms <= 1000:
        raise S2IError(f"--max-wait-ms must be between 0 and 1000, got {wait_ms:g}")
    if args.encode_threads < 1:
        raise S2IError(f"--encode-threads must be at least 1, got {args.encode_threads}")
    return max_batch, wait_ms / 1000


def open_translator_from_args(args: argparse.Namespace) -> Any:
    if getattr(args, "cluster", None):
        from runtime.cluster.client import open_cluster_translator  # ray only in its bridge

        return open_cluster_translator(args.cluster)
    from runtime.model.backends import open_translator  # onnxruntime/TensorRT; never torch

    precision = args.precision or default_precision(args.export)
    return open_translator(args.export, backend=args.backend, precision=precision,
                           threads=args.threads, features=getattr(args, "features", "auto"))


def open_pipeline(args: argparse.Namespace) -> Pipeline:
    return Pipeline(open_translator_from_args(args), samples=args.samples,
                    hop_seconds=args.hop, uncertainty=args.uncertainty,
                    encoding=args.encoding, seed=args.seed, topic=args.topic,
                    encoding_level=args.encoding_level)
