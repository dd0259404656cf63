"""The serving engine of ``s2i-serve``: ``NetworkLoop`` runs a ``NetworkIngress``
(runtime/serve/ingress.py: PULL, validation, rings, due streams) in its thread and the ``Stages``
(runtime/serve/stages.py: features -> model -> encode + publish) in theirs, and keeps the
counters, the log line every 10 s and ``--stats-file``. The console script is
runtime/apps/serve.py; ``s2i-stream`` (runtime/apps/stream.py) shares ``close_translator`` and
``wait_for_subscribers``.

    PULL -> ingress (validate, rings)  -> due windows of every stream
         -> features -> model (one batched call) -> encode + publish -> PUB
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import zmq

from runtime.artifacts import atomic_write_json
from runtime.cli import log
from runtime.errors import S2IError
from runtime.resilience import guarded
from runtime.serve.batching import CPU_DEFAULTS, Batching
from runtime.serve.ingress import DEFAULT_MAX_STREAMS, IDLE_EXPIRY_S, NetworkIngress
from runtime.serve.pipeline import Pipeline
from runtime.serve.stages import Stages, StatusLine
from runtime.wire.protocol import Publisher
from runtime.wire.security import ServerSecurity

SHUTDOWN_S = 0.8      # SIGTERM -> exit within a second, even with a model call in flight
COUNTERS_EVERY_S = 10.0
STATS_EVERY_S = 1.0   # --stats-file is rewritten this often


class NetworkLoop:
    """Ingress thread + stage threads for capture nodes; ``run(stop)`` blocks until stop."""

    def __init__(self, pipeline: Pipeline, publisher: Publisher, ctx: zmq.Context,
                 bind_address: str, batching: Batching = CPU_DEFAULTS,
                 max_streams: int = DEFAULT_MAX_STREAMS, idle_expiry_s: float = IDLE_EXPIRY_S,
                 encode_threads: int = 2, security: ServerSecurity | None = None,
                 stats_file: Path | None = None) -> None:
        self.pipeline, self.publisher = pipeline, publisher
        self.ingress = NetworkIngress(ctx, bind_address, pipeline.sample_rate, pipeline.window,
                                      pipeline.hop, max_streams, idle_expiry_s,
                                      security=security, on_end=publisher.end,
                                      batching=batching)
        self.address = self.ingress.address
        self.status = StatusLine()
        self.stages = Stages(pipeline, self.ingress, publisher, batching, encode_threads,
                             on_published=self.status.update)
        self._ingress_thread: threading.Thread | None = None
        self.failure: S2IError | None = None
        self._next_counters = time.monotonic() + COUNTERS_EVERY_S
        self._last_counters: dict[str, object] | None = None
        self.stats_file = stats_file
        self._next_stats = time.monotonic()

    @property
    def frames(self) -> int:
        return self.stages.counters.frames

    def counters(self) -> dict[str, object]:
        stages = self.stages.counters.as_dict()
        stages["cpu_s"] = {"ingress": round(self.ingress.cpu_s, 4), **stages["cpu_s"]}
        ingress = self.ingress.counters.as_dict()
        ingress["ingress_unexpected_errors"] = ingress.pop("unexpected_errors")
        return {**ingress, **stages, "streams": len(self.ingress.streams)}

    def write_stats(self, force: bool = False) -> None:
        """The counters, per-stage thread CPU and the process's CPU as JSON in
        ``stats_file`` (atomically, at most every ``STATS_EVERY_S``): read by
        ``python -m benchmarks serve``, which takes differences between two readings."""
        if self.stats_file is None or (not force and time.monotonic() < self._next_stats):
            return
        self._next_stats = time.monotonic() + STATS_EVERY_S
        try:
            # (counters() may give the CPU of more processes: s2i-serve --workers)
            atomic_write_json(self.stats_file, {"time": time.time(),
                                                "process_cpu_s": round(time.process_time(), 4),
                                                **self.counters()})
        except OSError as exc:
            log(f"cannot write --stats-file {self.stats_file}: {exc}; no more stats")
            self.stats_file = None

    def _tick(self) -> None:
        self._log_counters()
        self.write_stats()

    def start(self, stop: threading.Event) -> None:
        self._ingress_thread = threading.Thread(
            target=guarded("ingress", lambda: self.ingress.run(stop), self.stages.errors, stop),
            name="s2i-ingress", daemon=True)
        self._ingress_thread.start()
        self.stages.start(stop)

    def _log_counters(self) -> None:
        if time.monotonic() < self._next_counters:
            return
        self._next_counters = time.monotonic() + COUNTERS_EVERY_S
        c = self.counters()
        c.pop("cpu_s")                  # the idle ingress thread's polling moves it
        if c == self._last_counters:
            return                      # nothing happened: no line
        self._last_counters = c
        sizes = self.stages.counters.batch_sizes
        mean = sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values()))
        log(f"{c['streams']} streams, {c['frames']} frames in {c['batches']} batches "
            f"(mean {mean:.1f}), {c['skipped']} hops skipped, {c['stale_windows']} stale "
            f"results dropped, {c['dropped_windows']} windows dropped (model failures), "
            f"{c['bad_messages']} bad messages, {c['refused_streams']} streams refused, "
            f"{c['refused_duplicates']} duplicate-node messages refused, {c['stale_seq']} "
            f"duplicate-seq messages dropped, "
            f"{c['unexpected_errors'] + c['ingress_unexpected_errors']} unexpected errors "
            "survived")

    def run(self, stop: threading.Event) -> bool:
        """Serve until ``stop``; True if every thread ended within ``SHUTDOWN_S``. A thread
        that could not go on leaves its one-line ``S2IError`` in ``self.failure``."""
        self.start(stop)
        try:
            self.stages.wait(stop, on_tick=self._tick)
        except S2IError as exc:
            self.failure = exc
        finally:
            stop.set()
            ended = self.stages.join(SHUTDOWN_S)
            if self._ingress_thread is not None:
                self._ingress_thread.join(0.3)
                ended = ended and not self._ingress_thread.is_alive()
        self.write_stats(force=True)
        c = self.counters()
        if c["skipped"]:
            log(f"skipped {c['skipped']} late hops (the model is slower than the hop)")
        return ended


END_LINGER_MS = 200   # at shutdown, let the end messages go out


def exit_after(ended: bool, failure: S2IError | None, code: int) -> int:
    """A server's last step: ``code``, or ``failure`` raised (one line, exit 2, run_cli); when
    a model call is still running (``not ended``: a huge batch on a slow backend), nothing it
    holds needs saving, so the process exits now rather than wait for it."""
    if not ended:
        log("a stage was still busy at shutdown; exiting without waiting for it")
        if failure is not None:
            print(f"error: {failure}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(code)
    if failure is not None:
        raise failure
    return code


def close_translator(pipeline: Pipeline) -> None:
    """Release what the translator holds beyond this process (a cluster connection)."""
    pipeline.translator.close()


def wait_for_subscribers(publisher: Publisher, count: int, stop: threading.Event) -> None:
    if count <= 0:
        return
    log(f"waiting for {count} subscriber(s) on {publisher.address}")
    while not stop.is_set() and publisher.poll_subscriptions(100) < count:
        pass
