"""One worker process of ``s2i-serve --workers N`` (``python -m runtime.serve.worker CONFIG
INDEX``, started by runtime/serve/workers.py; never imports torch or a model backend).

    parent --ipc audio-I--> NetworkIngress (validate, resample, rings, due windows)
        -> features (Pipeline.features: log-mel, or the sanitised audio for in-graph models)
        --ipc windows--> the parent's model step --ipc results-I--> encode + publish
        --XPUB, connected to the parent's XSUB--> the parent's public PUB

Frames carry the parent's session. The worker ends itself when its parent is gone, and on
SIGTERM/SIGINT exits (the parent then ends the live streams for subscribers).
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from runtime import cli
from runtime.artifacts import load_json
from runtime.cli import RateLimitedLog, log, stop_on_signals
from runtime.errors import S2IError, run_cli
from runtime.resilience import guarded, survived
from runtime.serve.ingress import NetworkIngress
from runtime.serve.pipeline import Batch, Pipeline, Result
from runtime.serve.stages import Stages
from runtime.serve.workers import INTERNAL_HWM, decode_result, window_message
from runtime.wire import protocol
from runtime.wire.protocol import Publisher

STATS_EVERY_S = 1.0
TICK_S = 0.2
SESSION = re.compile(r"[0-9a-f]{16}")


class FrontEndOnly:
    """The translator's description without its model (which runs in the parent): what a
    worker's ``Pipeline`` needs for features, headers and encodings (a ``Translator`` whose
    batched call refuses)."""

    def __init__(self, manifest: dict[str, Any], features: str, backend: str) -> None:
        self.manifest, self.features, self.backend = manifest, features, backend
        self.dropout = manifest["dropout"]

    def translate_batch(self, inputs: np.ndarray, masks: Sequence[np.ndarray], samples: int
                        ) -> tuple[np.ndarray, dict[str, float]]:
        raise S2IError("the model runs in the s2i-serve parent process, not in a worker")

    def close(self) -> None:
        pass


class Worker:
    """The worker's sockets and threads (see the module's docstring)."""

    def __init__(self, config: dict[str, Any], index: int, ctx: zmq.Context) -> None:
        self.config, self.index, self.workers = config, index, int(config["workers"])
        folder = Path(config["folder"])
        self.pipeline = Pipeline(
            FrontEndOnly(config["manifest"], config["features"], config["backend"]),
            samples=config["samples"], hop_seconds=config["hop"],
            uncertainty=config["uncertainty"], encoding=config["encoding"],
            topic=config["topic"], encoding_level=config["encoding_level"])
        self.publisher = Publisher(ctx, f"ipc://{folder / 'frames'}", config["topic"],
                                   config["info"], sndhwm=INTERNAL_HWM, connect_to=True)
        p = self.pipeline
        self.ingress = NetworkIngress(ctx, f"ipc://{folder / f'audio-{index}'}", p.sample_rate,
                                      p.window, p.hop, config["max_streams"],
                                      config["idle_expiry"], on_end=self._ended)
        self.results = ctx.socket(zmq.PULL)
        self.results.setsockopt(zmq.LINGER, 0)
        self.results.setsockopt(zmq.RCVHWM, INTERNAL_HWM)
        self.results.bind(f"ipc://{folder / f'results-{index}'}")
        # one socket per thread: windows (features), ended (ingress), control (main)
        self.windows, self.ended, self.control = (ctx.socket(zmq.PUSH) for _ in range(3))
        for sock in (self.windows, self.ended, self.control):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, INTERNAL_HWM)
            sock.connect(f"ipc://{folder / 'windows'}")
        self.stages = Stages(p, self.ingress, self.publisher,
                             encode_threads=config["encode_threads"])
        self.max_batch = int(config["max_batch"])
        self.say = RateLimitedLog()
        self.sent = self.lost = self.unexpected = 0
        self.cpu = {"batching": 0.0, "features": 0.0, "receive": 0.0}

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` (or the parent's end); then end the streams."""
        deadline = time.monotonic() + 10.0     # the parent's XSUB subscribes to everything
        while not stop.is_set() and self.publisher.poll_subscriptions(100) < 1 \
                and time.monotonic() < deadline:
            pass
        threads = [threading.Thread(target=guarded(name, body, self.stages.errors, stop),
                                    name=f"s2i-{name}", daemon=True)
                   for name, body in (("ingress", lambda: self.ingress.run(stop)),
                                      ("features", lambda: self._send_windows(stop)),
                                      ("receive", lambda: self._receive(stop)))]
        for thread in threads:
            thread.start()
        self.stages.start(stop, only=("publish",))
        self.control.send_multipart([b"ready", str(self.index).encode()])
        parent, next_stats = int(self.config["parent"]), 0.0
        while not stop.wait(TICK_S):
            if os.getppid() != parent:
                log("the s2i-serve parent process is gone; stopping")
                stop.set()
            elif time.monotonic() >= next_stats:        # the parent's counters and stats
                next_stats = time.monotonic() + STATS_EVERY_S
                self._send_stats()
        self.stages.join(0.5)
        for thread in threads:
            thread.join(0.3)
        if self.stages.errors:
            log(str(self.stages.errors[0]))
        self._send_stats()
        self.publisher.flush_ends(force=True)    # the parent ends the live streams

    def _ended(self, stream: str, reason: str) -> None:
        """A stream ended (its node stopped, or it expired): subscribers are told, and the
        parent forgets its seq (called in the ingress thread)."""
        self.publisher.end(stream, reason)
        try:
            self.ended.send_multipart([b"ended", stream.encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _send_windows(self, stop: threading.Event) -> None:
        """Due windows -> features (one vectorised pass per take) -> the parent."""
        while not stop.is_set():
            clock = time.thread_time()
            windows = self.ingress.take(self.max_batch, 0.0, stop)
            now = time.thread_time()
            self.cpu["batching"] += now - clock
            if not windows:
                continue
            try:
                batch = self.pipeline.features(Batch(windows))
                assert batch.features is not None and batch.levels is not None
                ms = batch.timings_ms["features"]
                for i, window in enumerate(windows):
                    parts = window_message(window, batch.features[i], float(batch.levels[0][i]),
                                           float(batch.levels[1][i]), ms)
                    try:
                        self.windows.send_multipart(parts, zmq.NOBLOCK)
                        self.sent += 1
                    except zmq.Again:
                        self.lost += 1
            except Exception as exc:  # noqa: BLE001 - one failed batch costs only itself
                self.unexpected += 1
                survived(self.say, "the features of a worker", exc, self.unexpected,
                         f"{len(windows)} window(s)")
            self.cpu["features"] += time.thread_time() - now

    def _receive(self, stop: threading.Event) -> None:
        """The parent's results -> the publishing stage (Stages: encode, publish)."""
        while not stop.is_set():
            if not self.results.poll(100, zmq.POLLIN):
                continue
            clock = time.thread_time()
            results: list[Result] = []
            while len(results) < self.max_batch:
                try:
                    parts = self.results.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    results.append(decode_result(parts))
                except (S2IError, ValueError, LookupError, TypeError) as exc:
                    self.unexpected += 1
                    survived(self.say, "a result from the parent", exc, self.unexpected,
                             "one frame")
            self.cpu["receive"] += time.thread_time() - clock
            if results and not self.stages.put_results(results):
                return

    def _send_stats(self) -> None:
        counters = self.ingress.counters.as_dict()
        counters["unexpected_errors"] += self.unexpected
        stage_cpu = self.stages.counters.cpu_s
        cpu = {"ingress": self.ingress.cpu_s + self.cpu["receive"],
               "batching": self.cpu["batching"], "features": self.cpu["features"],
               "encode": stage_cpu["encode"], "publish": stage_cpu["publish"]}
        stats = {**counters, "streams": len(self.ingress.streams),
                 "frames": self.stages.counters.frames, "cpu_s": cpu,
                 "process_cpu_s": time.process_time()}
        try:
            self.control.send_multipart([b"stats", str(self.index).encode(),
                                         json.dumps(stats).encode()], zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.publisher.close(200)      # its last ends reach the parent
        for sock in (self.results, self.windows, self.ended, self.control):
            sock.close(linger=0)


def load_config(argv: list[str]) -> tuple[dict[str, Any], int]:
    """The parent's config file and this worker's index, checked."""
    if len(argv) != 2 or not argv[1].isdigit():
        raise S2IError("usage: python -m runtime.serve.worker CONFIG INDEX (started by "
                       "s2i-serve --workers)")
    config = load_json(Path(argv[0]), "s2i-serve worker config")
    index = int(argv[1])
    if not isinstance(config.get("workers"), int) or not 0 <= index < config["workers"]:
        raise S2IError(f"worker index {index} is not below the config's worker count")
    if not isinstance(config.get("session"), str) or not SESSION.fullmatch(config["session"]):
        raise S2IError("s2i-serve worker config: 'session' should be 16 hex digits")
    return config, index


def serve_worker(argv: list[str]) -> int:
    config, index = load_config(argv)
    cli.PREFIX = f"[s2i worker {index}]"
    protocol.SESSION_ID = config["session"]     # one server, one session: the parent's
    ctx = zmq.Context()
    worker = None
    try:
        with stop_on_signals() as stop:
            worker = Worker(config, index, ctx)
            worker.run(stop)
    finally:
        if worker is not None:
            worker.close()
        ctx.destroy(linger=0)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: serve_worker(sys.argv[1:] if argv is None else argv))

if __name__ == "__main__":
    sys.exit(main())
