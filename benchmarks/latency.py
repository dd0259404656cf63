"""``python -m benchmarks latency``: per-window latency of the real streaming runtime, backends
side by side, and how many concurrent streams each backend holds (docs/BENCHMARKS.md).

This module plans the rows (backend, precision, K), opens each backend, streams the same
windows through it (benchmarks/streaming.py), measures throughput (benchmarks/throughput.py)
and writes the results (benchmarks/report.py).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.isolation import release_memory, skip_reason
from benchmarks.streaming import close_stream, open_stream, stream_row
from benchmarks.throughput import max_streams
from runtime.config import config_json, parse_config
from runtime.errors import S2IError
from runtime.frontend import FrontEndConfig
from runtime.model.manifest import load_export_manifest
from runtime.model.precision import FEATURES, GPU_BACKENDS
from runtime.serve.pipeline import Pipeline

DEFAULT_WINDOWS = 300
DEFAULT_OUT = Path(__file__).parent / "results"
# (backend, precision) rows in the order they are run and shown; eager first: the baseline.
CANDIDATES: tuple[tuple[str, str], ...] = (
    ("pytorch-eager", "fp32"), ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu", "fp16"),
    ("onnxruntime-cpu", "int8"),
    ("pytorch-cuda", "fp32"), ("onnxruntime-cuda", "fp32"), ("onnxruntime-cuda", "fp16"),
    ("tensorrt", "fp32"), ("tensorrt", "fp16"),
)
GPU_ROWS = GPU_BACKENDS | {"pytorch-cuda"}


class Skipped(Exception):
    """A backend that cannot run here; its message is the reason shown in the results."""


# --------------------------------------------------------------------------- translators


def fresh_export(out_dir: Path, width: float, embedding_dim: int, fp16: bool,
                 seed: int = 0, int8: bool = False) -> Path:
    """Export an untrained translator of the given size (timings need the real sizes, not
    trained weights), its BatchNorm statistics calibrated on synthetic sounds so that its
    images depend on the input and the export's parity check can fail: a GAN checkpoint,
    then ``export.translator``. With ``int8`` the INT8 graphs are calibrated on a small
    synthesised demo store (real windows, untrained weights: for timing only, the quality
    gates are not measured)."""
    import torch

    from export.int8 import Int8Options
    from export.translator import ExportConfig, export_translator
    from trainer.calibrate import calibrate_batchnorm
    from trainer.checkpoint import save_untrained_translator
    from trainer.models import AudioEncoder, DenseGenerator

    torch.manual_seed(seed)
    encoder, generator = AudioEncoder(embedding_dim, width), DenseGenerator(embedding_dim, width)
    calibrate_batchnorm(encoder, generator, seed)   # images depend on the input: parity informs
    checkpoint = save_untrained_translator(
        out_dir.parent / "fresh_gan.pt", encoder, generator, embedding_dim, width,
        "benchmarks.latency: freshly initialised, for timing only")
    options = Int8Options()
    if int8:
        from trainer.data.demo_data import build_demo_store

        store = build_demo_store(out_dir.parent / "calibration_store", 4, 2, 2, seed=seed,
                                 progress=False)
        # one calibration method (the one "auto" kept on the trained demo): how ranges are
        # set changes the scales, not the graph, so not the time
        options = Int8Options(store=str(store), windows=16, gates=False,
                              calibration="percentile:99.9")
    return export_translator(ExportConfig(checkpoint, out_dir, fp16=fp16, fused=False,
                                          int8=int8, int8_options=options))


def open_backend(name: str, precision: str, export_dir: Path, manifest: dict[str, Any],
                 threads: int, features: str = "auto") -> Any:
    """A translator for one row, or ``Skipped(reason)``. ``features``: where the log-mel
    runs (``runtime.model.backends.open_translator``; PyTorch rows always use the host's)."""
    if name.startswith("pytorch"):
        if features == "graph":
            raise Skipped("PyTorch rows compute the features on the host (runtime/frontend.py)")
        import torch

        from benchmarks.eager import EagerTranslator

        if name == "pytorch-cuda" and not torch.cuda.is_available():
            raise Skipped(f"torch {torch.__version__} has no CUDA device")
        checkpoint = Path(manifest.get("checkpoint", {}).get("path") or "")
        if not checkpoint.is_file():
            raise Skipped(f"the export's checkpoint {checkpoint} is not on this machine")
        torch.set_num_threads(threads)
        return EagerTranslator.from_checkpoint(checkpoint, manifest,
                                               "cuda" if name == "pytorch-cuda" else "cpu")
    try:
        from runtime.model.backends import open_translator
    except ImportError as exc:
        raise Skipped(f"runtime.model.backends.open_translator is not available ({exc})") from exc
    try:
        return open_translator(export_dir, backend=name, precision=precision,
                               threads=None if name in GPU_ROWS else threads,
                               features=features)
    except S2IError as exc:
        raise Skipped(str(exc)) from exc


# --------------------------------------------------------------------------- a whole run


def demo_audio(path: Path, seconds: float) -> Path:
    from trainer.data.demo_data import write_demo_wav

    write_demo_wav(path, seconds, seed=0)
    return path


def row_summary(backend: str, precision: str, k: int, records: list[dict[str, float]],
                keep_samples: bool = True) -> dict[str, Any]:
    e2e = [r["end_to_end"] for r in records]
    row: dict[str, Any] = {
        "backend": backend, "precision": precision, "k": k, "windows": len(records),
        "end_to_end_ms": report.summarize(e2e),
        "stages_ms": {s: report.summarize([r[s] for r in records])
                      for s in (*report.STAGES, "other")},
    }
    if keep_samples:
        row["samples_ms"] = {"end_to_end": [round(x, 3) for x in e2e]}
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Speed-up of each row over PyTorch eager with the same K (on the same device class)."""
    for row in rows:
        base_name = "pytorch-cuda" if row["backend"] in GPU_ROWS else "pytorch-eager"
        base = next((r for r in rows if r["backend"] == base_name and r["k"] == row["k"]), None)
        if base is None:
            continue
        row["speedup_vs_eager"] = {
            "baseline": base_name,
            **{q: round(base["end_to_end_ms"][q] / row["end_to_end_ms"][q], 3)
               for q in ("p50", "p99") if row["end_to_end_ms"].get(q)}}


def check_targets(rows: list[dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """The issue's figures against this run (reported, never asserted)."""
    t = report.TARGETS
    out: dict[str, Any] = {"targets": dict(t)}
    ort = next((r for r in rows if r["backend"] == "onnxruntime-cpu" and r["k"] == 1
                and r["precision"] == "fp32"), None)
    if ort is not None:
        p99 = ort["end_to_end_ms"]["p99"]
        speed = ort.get("speedup_vs_eager", {}).get("p99")
        out["cpu_k1_p99_ms"] = {"measured": p99, "met": p99 <= t["cpu_k1_p99_ms"],
                                "cores": machine["cores"]}
        if speed is not None:
            out["cpu_ort_speedup_vs_eager"] = {"measured_p99": speed,
                                               "met": speed >= t["cpu_ort_speedup_vs_eager"]}
    for k, target in ((1, 2.5), (8, 2.0)):   # issue 17: INT8 end-to-end p99 vs eager
        int8 = next((r for r in rows if r["backend"] == "onnxruntime-cpu" and r["k"] == k
                     and r["precision"] == "int8"), None)
        speed = (int8 or {}).get("speedup_vs_eager", {}).get("p99")
        if speed is not None:
            out[f"cpu_int8_k{k}_p99_speedup_vs_eager"] = {"measured": speed, "target": target,
                                                          "met": speed >= target}
    trt = next((r for r in rows if r["backend"] == "tensorrt" and r["precision"] == "fp16"
                and r["k"] == 8), None)
    if trt is not None:
        p99 = trt["end_to_end_ms"]["p99"]
        out["gpu_trt_fp16_k8_p99_ms"] = {"measured": p99, "met": p99 <= t["gpu_trt_fp16_k8_p99_ms"]}
    return out


ROWS_HELP = ", ".join(f"{b}:{q}" for b, q in CANDIDATES)


@dataclass
class LatencyConfig:
    """``python -m benchmarks latency``'s settings (``--quick``: the ``QUICK`` preset under
    the flags given)."""

    export: Path | None = field(default=None, metadata={
        "help": "an export folder to time (default: export a freshly initialised translator "
                "of --width/--embedding-dim into a temp folder)"})
    width: float = field(default=1.0, metadata={"help": "network width (1.0 = the paper)"})
    embedding_dim: int = field(default=512, metadata={"help": "D"})
    windows: int = field(default=DEFAULT_WINDOWS, metadata={
        "help": "timed windows per backend and K"})
    warmup: int = field(default=5, metadata={"help": "untimed windows first"})
    k: tuple[int, ...] = field(default=(1, 8), metadata={"help": "MC samples per window"})
    backends: tuple[str, ...] | None = field(default=None, metadata={
        "help": f"backend[:precision] rows (default: all of {ROWS_HELP})"})
    threads: int = field(default=2, metadata={
        "help": "CPU threads for PyTorch and ONNX Runtime CPU"})
    encoding: str = field(default="png", metadata={"choices": ("png", "raw", "jpeg")})
    features: tuple[str, ...] = field(default=("auto",), metadata={
        "choices": FEATURES,
        "help": "where the log-mel runs, one row each: graph (the export's audio-in graphs), "
                "host (numpy), auto (graph where the export has it); e.g. --features host "
                "graph to compare them"})
    audio: Path | None = field(default=None, metadata={
        "help": "audio file to stream (default: a 60-s demo WAV, looped)"})
    realtime: bool = field(default=False, metadata={
        "switch": True,
        "help": "play the file at the pace of the clock through the runtime's FileSource "
                "(one window per second: 300 windows take 5 min per row) instead of feeding "
                "each hop when the previous image has arrived"})
    throughput: bool = field(default=True, metadata={
        "switch": True, "help": "skip the streams measurement"})
    max_streams: int = field(default=65536, metadata={"help": "stop the streams search here"})
    throughput_reps: int = field(default=20, metadata={
        "help": "batched calls timed per batch size"})
    throughput_cap: float = field(default=15.0, metadata={
        "help": "seconds at most per batch size, at least 3 calls"})
    out: Path = field(default=DEFAULT_OUT, metadata={"help": "results folder"})
    quick: bool = field(default=False, metadata={
        "switch": True,
        "help": "smoke run: width 0.125, 20 windows, K 1 2, CPU rows, <= 8 streams"})

    def __post_init__(self) -> None:
        if self.windows < 1 or self.warmup < 0 or min(self.k) < 1 or self.threads < 1:
            raise ValueError("--windows, --k and --threads must be at least 1, --warmup at "
                             "least 0")


def plan_rows(requested: list[str] | None) -> list[tuple[str, str]]:
    if not requested:
        return list(CANDIDATES)
    rows = []
    for item in requested:
        name, _, precision = item.partition(":")
        pairs = [(b, q) for b, q in CANDIDATES if b == name and (not precision or q == precision)]
        if not pairs:
            raise S2IError(f"unknown backend row {item!r}; expected backend[:precision] from "
                           + ", ".join(f"{b}:{q}" for b, q in CANDIDATES))
        rows += [r for r in pairs if r not in rows]
    return rows


QUICK = {"width": 0.125, "windows": 20, "warmup": 2, "k": (1, 2), "max_streams": 8,
         "throughput_reps": 3, "throughput_cap": 1.0,
         "backends": ["pytorch-eager", "onnxruntime-cpu:fp32"]}


def settings(args: LatencyConfig, manifest: dict[str, Any], export_dir: Path,
             front_end: FrontEndConfig) -> dict[str, Any]:
    """The run's settings as the results and the report show them."""
    pacing = ("realtime: the runtime's FileSource plays the file at the pace of the clock"
              if args.realtime else
              "consumption: the next hop is written when the previous image is received")
    return {
        "windows": args.windows, "warmup": args.warmup, "k": list(args.k),
        "embedding_dim": int(manifest["embedding_dim"]), "width": float(manifest["width"]),
        "threads": args.threads, "encoding": args.encoding, "hop_s": 1.0,
        "window_s": front_end.window_seconds, "pacing": pacing,
        "transport": "ZeroMQ XPUB/SUB over tcp://127.0.0.1, subscriber in another process",
        "export": str(export_dir), "fresh_weights": args.export is None,
        "audio": str(args.audio or "demo WAV (60 s, looped)"),
        "quick": bool(args.quick), "throughput_budget_s": 1.0,
    }


class LatencyRun:
    """One run's rows, skipped rows and throughput, measured through one stream."""

    def __init__(self, args: LatencyConfig, export_dir: Path, audio_path: Path) -> None:
        from runtime.audio.decode import load_audio

        self.args, self.export_dir, self.audio_path = args, export_dir, audio_path
        self.manifest = load_export_manifest(export_dir)
        self.front_end = FrontEndConfig.from_dict(self.manifest["front_end"])
        self.audio = load_audio(audio_path, self.front_end.sample_rate)
        n = self.front_end.n_samples
        self.windows_audio = np.stack([self.audio[i:i + n] for i in range(
            0, max(1, len(self.audio) - n + 1), n)])
        self.machine = report.machine_info()
        self.settings = settings(args, self.manifest, export_dir, self.front_end)
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.throughput: list[dict[str, Any]] = []
        self.stream: Any = None

    def results(self) -> dict[str, Any]:
        add_speedups(self.rows)
        return {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": self.machine, "versions": report.versions(),
                "settings": self.settings, "config": config_json(self.args),
                "latency": self.rows, "skipped": self.skipped, "throughput": self.throughput,
                "targets": check_targets(self.rows, self.machine),
                "export": {"manifest_models": sorted(self.manifest["models"]),
                           "tensorrt": self.manifest.get("tensorrt")}}

    def row(self, translator: Any, backend: str, precision: str, k: int) -> None:
        """One (backend, precision, K) row through the stream, then its throughput."""
        args = self.args
        pipeline = Pipeline(translator, samples=k, hop_seconds=1.0, encoding=args.encoding,
                            seed=0)
        records = stream_row(self.stream, pipeline, self.audio, args.windows, args.warmup,
                             f"{backend}/{precision}/k{k}",
                             self.audio_path if args.realtime else None)
        self.rows.append(row_summary(backend, precision, k, records))
        row = self.rows[-1]
        row["features"] = translator.features
        e = row["end_to_end_ms"]
        print(f"{backend:<17} {precision} {row['features']} K={k}: p50 {e['p50']:.1f} ms  p95 "
              f"{e['p95']:.1f}  p99 {e['p99']:.1f}  max {e['max']:.1f}", flush=True)
        if not args.throughput:
            return
        result = max_streams(translator, self.windows_audio, self.front_end, k,
                             reps=args.throughput_reps, time_cap_s=args.throughput_cap,
                             limit=args.max_streams, pipelined=backend in GPU_ROWS)
        self.throughput.append({"backend": backend, "precision": precision, "k": k,
                                "features": row["features"], **result})
        print(f"{'':<17} streams held: {result['streams']}"
              f"{' (search limit)' if result['limit_reached'] else ''}", flush=True)

    def backend(self, backend: str, precision: str, features: str,
                on_row: Callable[[dict[str, Any]], None] | None) -> None:
        """Open one backend, run its rows for every K, free it; a failure is a skipped row."""
        args = self.args
        if backend.startswith("pytorch") and features == "auto" and "host" in args.features:
            return                                 # the same row twice
        try:
            translator = open_backend(backend, precision, self.export_dir, self.manifest,
                                      args.threads, features)
        except Skipped as exc:
            if len(args.features) == 1 or not backend.startswith("pytorch"):
                self.skipped.append({"backend": backend, "precision": precision,
                                     "features": features, "reason": str(exc)})
                print(f"skip {backend} {precision} ({features} features): {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - out of memory, a broken GPU stack...
            self.skipped.append({"backend": backend, "precision": precision,
                                 "reason": skip_reason(exc)})
            print(f"skip {backend} {precision}: {skip_reason(exc)}", flush=True)
            release_memory()
            return
        try:
            for k in args.k:
                self.row(translator, backend, precision, k)
                if on_row is not None:
                    on_row(self.results())
        except Exception as exc:  # noqa: BLE001 - one backend failing ends its rows only
            reason = skip_reason(exc)
            self.skipped.append({"backend": backend, "precision": precision,
                                 "reason": f"{reason} (K={k})"})
            print(f"skip {backend} {precision} K={k}: {reason}", flush=True)
        finally:
            del translator      # free this backend (sessions, engines, GPU memory)
            release_memory()    # before the next one is opened
        if on_row is not None:
            on_row(self.results())


def run(args: LatencyConfig, work: Path,
        on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every planned row, each backend opened, measured and freed before the next; a
    backend that fails (out of memory included) becomes a skipped row with its reason.
    ``on_row(results so far)`` is called after every row (the CLI writes the JSON then)."""
    import zmq

    rows_planned = plan_rows(args.backends)
    wants_fp16 = any(q == "fp16" for _, q in rows_planned)
    wants_int8 = any(q == "int8" for _, q in rows_planned)
    export_dir = args.export or fresh_export(work / "export", args.width, args.embedding_dim,
                                             fp16=wants_fp16, int8=wants_int8)
    bench = LatencyRun(args, export_dir, args.audio or demo_audio(work / "demo.wav", 60.0))
    ctx = zmq.Context()
    try:
        bench.stream = open_stream(ctx, {"backend": "benchmark", "samples": max(args.k)})
    except BaseException:
        ctx.term()
        raise
    try:
        for (backend, precision), features in ((row, f) for row in rows_planned
                                               for f in args.features):
            bench.backend(backend, precision, features, on_row)
    finally:
        close_stream(bench.stream)
        ctx.term()
    return bench.results()


def main(argv: list[str]) -> int:
    args = parse_config(LatencyConfig, argv, "python -m benchmarks latency",
                        "Per-window latency (window end -> image received by a ZeroMQ "
                        "subscriber) of the streaming runtime, backends side by side, and "
                        "concurrent streams.", presets={"quick": QUICK})
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"latency-{report.machine_info()['name']}.json"

    def write_partial(partial: dict[str, Any]) -> None:   # a crash later keeps these rows
        report.write_json(json_path, {**partial, "partial": True})

    with tempfile.TemporaryDirectory(prefix="s2i-bench-") as tmp:
        results = run(args, Path(tmp), on_row=write_partial)
    name = results["machine"]["name"]
    png_path = args.out / f"latency-{name}.png"
    report.write_json(json_path, results)
    report.write_markdown(args.out / "latency.md", results)
    report.plot(png_path, results)
    print()
    print(report.markdown_table(results))
    print(f"wrote {json_path}, {png_path} and {args.out / 'latency.md'}")
    return 0
