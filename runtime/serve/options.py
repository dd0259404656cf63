"""Option groups shared by ``s2i-stream`` and ``s2i-serve`` (runtime.config dataclasses: each
is a titled flag group of both commands): the model, publishing and batching; and opening the
``Pipeline`` they describe."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.config import switch
from runtime.errors import S2IError
from runtime.model.precision import FEATURES, GPU_BACKENDS, PRECISIONS
from runtime.model.shipped import TRAINED_EXPORT, default_export, default_precision
from runtime.serve.batching import CPU_DEFAULTS, GPU_DEFAULTS
from runtime.serve.engine import STATS_EVERY_S
from runtime.serve.ingress import DEFAULT_MAX_STREAMS, IDLE_EXPIRY_S
from runtime.serve.pipeline import Pipeline
from runtime.wire.protocol import DEFAULT_TOPIC, ENCODINGS
from runtime.wire.security import SECURITY_TITLE, NodeServerCurve

MAX_WORKERS = 64

DEFAULT_EXPORT = TRAINED_EXPORT


@dataclass
class ModelOptions:
    """The translator and what it makes of each window."""

    export: str = field(default_factory=default_export, metadata={
        "help": f"export folder (default: {DEFAULT_EXPORT} when it exists, else the demo "
                "model shipped with S2I)"})
    backend: str = field(default="auto", metadata={
        "help": "auto | tensorrt | onnxruntime-cuda | onnxruntime-cpu (default: auto)"})
    precision: str | None = field(default=None, metadata={
        "choices": PRECISIONS,
        "help": "fp32 (default; fp16 for the shipped demo model, which holds FP16 graphs "
                "only), fp16, or int8 (onnxruntime-cpu; export --int8)"})
    features: str = field(default="auto", metadata={
        "choices": FEATURES,
        "help": "where the log-mel front end runs: graph (inside the model: the export's "
                "audio-in graphs), host (runtime/frontend.py, numpy), or auto (default: graph "
                "when the export has it for this backend and precision)"})
    hop: float = field(default=1.0, metadata={
        "help": "seconds between windows (1-s window; down to 0.25 or less)"})
    samples: int = field(default=1, metadata={
        "help": "K images per window, each with fresh dropout masks (default: 1)"})
    uncertainty: bool = switch("also send the per-pixel std across the K samples")
    seed: int | None = field(default=None, metadata={"help": "seed for the dropout masks"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads for ONNX Runtime"})
    cluster: str | None = field(default=None, metadata={
        "metavar": "ADDRESS[/APP]",
        "help": "run the model in a Ray Serve deployment instead of here: the Ray address "
                "(HEAD:6379, or auto) and application name (default s2i); "
                "--export/--backend/--precision/--threads are then the deployment's "
                "(deploy/serve.yaml, docs/SCALING.md)"})


@dataclass
class PublishOptions:
    """How frames go out: payload encoding and the PUB socket."""

    encoding: str = field(default="png", metadata={
        "choices": ENCODINGS,
        "help": "image payloads: png (lossless), jpeg (lossy, cheapest to send compressed) or "
                "raw (no encoding cost, ~27 KB per 96x96 image)"})
    encoding_level: int | None = field(default=None, metadata={
        "metavar": "N",
        "help": "png: compression level 0-9 (default 1); jpeg: quality 1-95 (default 85)"})
    pub: str = field(default="tcp://127.0.0.1:5556", metadata={
        "help": "PUB address to bind (default: tcp://127.0.0.1:5556, this machine only; e.g. "
                "tcp://0.0.0.0:5556 opens it to the network)"})
    topic: str = DEFAULT_TOPIC
    wait_subscribers: int = field(default=0, metadata={
        "metavar": "N",
        "help": "start only once N subscriptions have arrived (no frame is missed)"})


@dataclass
class BatchingOptions:
    """Windows of several streams in one model call."""

    max_batch: int | None = field(default=None, metadata={
        "metavar": "B", "help": f"most windows in one model call (default: "
                                f"{CPU_DEFAULTS.max_batch} on CPU, {GPU_DEFAULTS.max_batch} on "
                                "GPU backends)"})
    max_wait_ms: float | None = field(default=None, metadata={
        "metavar": "MS", "help": f"how long a due window may wait for company (default: "
                                 f"{CPU_DEFAULTS.max_wait_s * 1000:g} ms on CPU, "
                                 f"{GPU_DEFAULTS.max_wait_s * 1000:g} ms on GPU backends)"})
    encode_threads: int = field(default=2, metadata={
        "metavar": "N", "help": "threads encoding PNG payloads (default: 2)"})


def batching(options: BatchingOptions, backend: str) -> tuple[int, float]:
    """(max batch, max wait in seconds) from the options or the backend's defaults."""
    default = GPU_DEFAULTS if backend in GPU_BACKENDS else CPU_DEFAULTS
    max_batch = default.max_batch if options.max_batch is None else options.max_batch
    wait_ms = default.max_wait_s * 1000 if options.max_wait_ms is None else options.max_wait_ms
    if max_batch < 1:
        raise S2IError(f"--max-batch must be at least 1, got {max_batch}")
    if not 0 <= wait_ms <= 1000:
        raise S2IError(f"--max-wait-ms must be between 0 and 1000, got {wait_ms:g}")
    if options.encode_threads < 1:
        raise S2IError(f"--encode-threads must be at least 1, got {options.encode_threads}")
    return max_batch, wait_ms / 1000


def open_model(model: ModelOptions) -> Any:
    """The translator ``model`` describes: a Ray Serve deployment's client (``cluster``) or
    a local backend."""
    if model.cluster:
        from runtime.cluster.client import open_cluster_translator  # ray only in its bridge

        return open_cluster_translator(model.cluster)
    from runtime.model.backends import open_translator  # onnxruntime/TensorRT; never torch

    precision = model.precision or default_precision(model.export)
    return open_translator(model.export, backend=model.backend, precision=precision,
                           threads=model.threads, features=model.features)


def open_pipeline(model: ModelOptions, publish: PublishOptions | None = None) -> Pipeline:
    """The ``Pipeline`` of the model and publishing options (defaults for those not given)."""
    publish = publish or PublishOptions()
    return Pipeline(open_model(model), samples=model.samples, hop_seconds=model.hop,
                    uncertainty=model.uncertainty, encoding=publish.encoding, seed=model.seed,
                    topic=publish.topic, encoding_level=publish.encoding_level)


@dataclass
class ServeConfig:
    """``s2i-serve``'s settings; saved beside ``--stats-file`` (``PATH.config.json``)."""

    bind: str = field(default="tcp://127.0.0.1:5555", metadata={
        "help": "address to PULL audio on (default: tcp://127.0.0.1:5555, this machine only; "
                "e.g. tcp://0.0.0.0:5555 opens it)"})
    max_streams: int = field(default=DEFAULT_MAX_STREAMS, metadata={
        "metavar": "N",
        "help": "most live streams (per worker process with --workers N); newcomers past it "
                "are refused"})
    idle_expiry: float = field(default=IDLE_EXPIRY_S, metadata={
        "metavar": "S", "help": "forget a stream silent this long, in seconds"})
    workers: int = field(default=1, metadata={
        "metavar": "N",
        "help": "worker processes for ingress, features and encoding around one model step "
                "(default: 1, all in this process; docs/RUNTIME.md)"})
    stats_file: Path | None = field(default=None, metadata={
        "metavar": "PATH",
        "help": "keep the counters and each stage's thread CPU time as JSON in PATH, "
                f"rewritten every {STATS_EVERY_S:g} s (for benchmarks)"})
    model: ModelOptions = field(default_factory=ModelOptions, metadata={"title": "model"})
    publish: PublishOptions = field(default_factory=PublishOptions,
                                    metadata={"title": "publishing"})
    batching: BatchingOptions = field(default_factory=BatchingOptions,
                                      metadata={"title": "batching across streams"})
    security: NodeServerCurve = field(default_factory=NodeServerCurve,
                                      metadata={"title": SECURITY_TITLE})

    def __post_init__(self) -> None:
        if not 1 <= self.workers <= MAX_WORKERS:
            raise S2IError(f"--workers must be 1-{MAX_WORKERS}, got {self.workers}")


def stats_config_path(stats_file: Path) -> Path:
    """Where the resolved config of a run with ``--stats-file`` is saved."""
    return stats_file.with_name(stats_file.name + ".config.json")
