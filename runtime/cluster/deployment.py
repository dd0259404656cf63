"""The S2I translator as a Ray Serve deployment (ONNX Runtime CPU/CUDA or TensorRT, no torch).

One replica loads an export folder with ``runtime.model.backends.open_translator`` and answers
batched translate calls: ``@serve.batch`` merges the calls that arrive within
``batch_wait_timeout_s`` (up to ``max_batch_size`` calls, each already a front's batch of
windows) into one encoder run and one generator run. Replicas, GPUs per replica, autoscaling and
the batch settings live in a Serve config file (deploy/serve.yaml)::

    serve deploy deploy/serve.yaml --address http://HEAD:8265     # docs/SCALING.md
    python -m runtime.cluster.local deploy --export DIR            # the loopback test cluster
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import numpy as np
from ray import serve

from runtime.cluster.wire import WIRE_VERSION, check_request
from runtime.errors import S2IError

DEPLOYMENT = "S2ITranslator"
BATCH_DEFAULTS = {"max_batch_size": 8, "batch_wait_timeout_s": 0.002}


@serve.deployment(name=DEPLOYMENT, ray_actor_options={"num_cpus": 1}, max_ongoing_requests=32,
                  user_config=BATCH_DEFAULTS)
class S2ITranslator:
    def __init__(self, export: str, backend: str = "auto", precision: str = "fp32",
                 threads: int | None = None) -> None:
        from runtime.model.backends import open_translator  # onnxruntime/TensorRT, never torch

        self.translator = open_translator(export, backend=backend, precision=precision,
                                          threads=threads)
        self.where = f"{socket.gethostname()}:{os.getpid()}"
        self.batches = 0

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve's ``user_config``: ``max_batch_size`` (calls merged into one model run) and
        ``batch_wait_timeout_s`` (how long the first call waits for others)."""
        unknown = set(config) - set(BATCH_DEFAULTS)
        if unknown:
            raise S2IError(f"user_config: unknown key(s) {sorted(unknown)}; expected "
                           f"{sorted(BATCH_DEFAULTS)}")
        size = config.get("max_batch_size", BATCH_DEFAULTS["max_batch_size"])
        wait = config.get("batch_wait_timeout_s", BATCH_DEFAULTS["batch_wait_timeout_s"])
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise S2IError(f"user_config max_batch_size should be a positive integer, got {size!r}")
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 1:
            raise S2IError(f"user_config batch_wait_timeout_s should be 0..1 s, got {wait!r}")
        self.run_batch.set_max_batch_size(size)
        self.run_batch.set_batch_wait_timeout_s(float(wait))

    def info(self) -> dict[str, Any]:
        t = self.translator
        return {"wire": WIRE_VERSION, "manifest": t.manifest, "backend": t.backend,
                "precision": t.precision, "replica": self.where, "batches": self.batches}

    async def __call__(self, request: Any) -> dict[str, Any]:
        """One front's batch (``runtime.cluster.wire``) -> ``{"images": [B*K, 3, 96, 96],
        "timings_ms": {"encoder", "generator"}}``."""
        checked = check_request(request, self.translator.dropout)   # bad input costs only itself
        return await self.run_batch(checked)

    def encode(self, spectrogram: Any) -> np.ndarray:
        """Unbatched encoder call (``ClusterTranslator.encode``); the Translator checks shapes."""
        if not isinstance(spectrogram, np.ndarray):
            raise S2IError("encode takes a float32 spectrogram array")
        return self.translator.encode(spectrogram)

    def generate(self, request: Any) -> np.ndarray:
        """Unbatched generator call: ``{"embedding": [B, D], "masks": [[B, C_i], ...]}``."""
        if not isinstance(request, dict) or not isinstance(request.get("masks"), list):
            raise S2IError("generate takes {embedding, masks}")
        return self.translator.generate(request.get("embedding"), request["masks"])

    @serve.batch(max_batch_size=BATCH_DEFAULTS["max_batch_size"],
                 batch_wait_timeout_s=BATCH_DEFAULTS["batch_wait_timeout_s"])
    async def run_batch(self, calls: list[tuple[np.ndarray, list[np.ndarray], int]]
                        ) -> list[dict[str, Any]]:
        # The model runs in a thread so that the next calls queue up (and batch) meanwhile.
        return await asyncio.get_running_loop().run_in_executor(None, self._translate, calls)

    def _translate(self, calls: list[tuple[np.ndarray, list[np.ndarray], int]]
                   ) -> list[dict[str, Any]]:
        self.batches += 1
        began = time.perf_counter()
        z = self.translator.encode(np.concatenate([spec for spec, _, _ in calls]))
        encoded = time.perf_counter()
        rows, start = [], 0
        for spec, _, samples in calls:
            rows.append(np.repeat(z[start:start + len(spec)], samples, axis=0))
            start += len(spec)
        masks = [np.concatenate([m[i] for _, m, _ in calls])
                 for i in range(len(self.translator.dropout))]
        images = self.translator.generate(np.concatenate(rows), masks)
        # The model run's own times (shared by the calls it merged): the front reports them
        # beside its round trip (header timings_ms: encoder, generator, cluster).
        timings = {"encoder": round((encoded - began) * 1000, 3),
                   "generator": round((time.perf_counter() - encoded) * 1000, 3)}
        sizes = np.cumsum([len(spec) * samples for spec, _, samples in calls])[:-1]
        return [{"images": np.ascontiguousarray(part), "timings_ms": timings}
                for part in np.split(images, sizes)]


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application for ``import_path: runtime.cluster.deployment:build_app``.
    ``args``: ``export`` (folder, same path on every node), optional ``backend``,
    ``precision``, ``threads``."""
    known = {"export", "backend", "precision", "threads"}
    if set(args) - known or "export" not in args:
        raise S2IError(f"application args {sorted(args)}: expected 'export' and optionally "
                       "'backend', 'precision', 'threads'")
    export = str(args["export"])
    if not os.path.isabs(export):
        # Replicas run in Ray's worker folders, not where `serve deploy` was typed: a relative
        # path would name different folders on different nodes.
        raise S2IError(f"application args export {export!r}: give an absolute path (the same "
                       "on every replica's node)")
    threads = args.get("threads")
    return S2ITranslator.bind(export, str(args.get("backend", "auto")),
                              str(args.get("precision", "fp32")),
                              int(threads) if threads not in (None, "") else None)
