"""``s2i-serve``: a multi-stream inference server. Capture nodes PUSH audio; frames go out
on PUB. The stages (runtime/stages.py) run in threads joined by bounded queues:

    PULL -> ingress (validate, resample, rings)  -> due windows of every stream
         -> features -> model (one batched call) -> encode + publish -> PUB

``NetworkLoop`` wires a ``Pipeline`` (runtime/pipeline.py) to a ``NetworkIngress``
(runtime/ingress.py) and a ``Publisher``; ``serve_main`` is the command line. ``Pipeline``,
``run_ring`` and ``run_file`` are re-exported here for older callers.
"""

from __future__ import annotations

import argparse
import os
import socket as socketlib
import sys
import threading
import time
from pathlib import Path

import zmq

from runtime.cli import exit_code, log, stop_on_signals
from runtime.errors import S2IError, run_cli
from runtime.ingress import DEFAULT_MAX_STREAMS, IDLE_EXPIRY_S, NetworkIngress
from runtime.manifest import atomic_write_json
from runtime.options import (
    DEFAULT_EXPORT,
    add_batching_args,
    add_pipeline_args,
    batching,
    open_pipeline,
)
from runtime.pipeline import MIN_HOP_SECONDS, Pipeline, Window
from runtime.protocol import Publisher
from runtime.security import (
    ServerSecurity,
    add_server_security_args,
    check_address,
    server_security,
)
from runtime.stages import Stages, StatusLine, run_file, run_ring

__all__ = ["DEFAULT_EXPORT", "MIN_HOP_SECONDS", "NetworkLoop", "Pipeline", "Window",
           "add_pipeline_args", "main", "open_pipeline", "run_file", "run_ring",
           "serve_main", "wait_for_subscribers"]

END_LINGER_MS = 200   # at shutdown, let the end messages go out
SHUTDOWN_S = 0.8      # SIGTERM -> exit within a second, even with a model call in flight
COUNTERS_EVERY_S = 10.0
STATS_EVERY_S = 1.0   # --stats-file is rewritten this often


class NetworkLoop:
    """Ingress thread + stage threads for capture nodes; ``run(stop)`` blocks until stop."""

    def __init__(self, pipeline: Pipeline, publisher: Publisher, ctx: zmq.Context,
                 bind_address: str, max_batch: int = 64, max_wait_s: float = 0.01,
                 max_streams: int = DEFAULT_MAX_STREAMS, idle_expiry_s: float = IDLE_EXPIRY_S,
                 encode_threads: int = 2, security: ServerSecurity | None = None,
                 stats_file: Path | None = None) -> None:
        self.pipeline, self.publisher = pipeline, publisher
        self.ingress = NetworkIngress(ctx, bind_address, pipeline.sample_rate, pipeline.window,
                                      pipeline.hop, max_streams, idle_expiry_s,
                                      security=security, on_end=publisher.end)
        self.address = self.ingress.address
        self.status = StatusLine()
        self.stages = Stages(pipeline, self.ingress, publisher, max_batch, max_wait_s,
                             encode_threads, on_published=self.status.update)
        self._ingress_thread: threading.Thread | None = None
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
        return {**self.ingress.counters.as_dict(), **stages,
                "streams": len(self.ingress.streams)}

    def write_stats(self, force: bool = False) -> None:
        """The counters, per-stage thread CPU and the process's CPU as JSON in
        ``stats_file`` (atomically, at most every ``STATS_EVERY_S``): read by
        ``python -m benchmarks serve``, which takes differences between two readings."""
        if self.stats_file is None or (not force and time.monotonic() < self._next_stats):
            return
        self._next_stats = time.monotonic() + STATS_EVERY_S
        try:
            atomic_write_json(self.stats_file, {**self.counters(), "time": time.time(),
                                                "process_cpu_s": round(time.process_time(), 4)})
        except OSError as exc:
            log(f"cannot write --stats-file {self.stats_file}: {exc}; no more stats")
            self.stats_file = None

    def _tick(self) -> None:
        self._log_counters()
        self.write_stats()

    def start(self, stop: threading.Event) -> None:
        self._ingress_thread = threading.Thread(target=self.ingress.run, args=(stop,),
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
            f"(mean {mean:.1f}), {c['skipped']} hops skipped, {c['dropped_windows']} windows "
            f"dropped (model failures), {c['bad_messages']} bad "
            f"messages, {c['refused_streams']} streams refused, {c['refused_duplicates']} "
            f"duplicate-node messages refused")

    def run(self, stop: threading.Event) -> bool:
        """Serve until ``stop``; True if every thread ended within ``SHUTDOWN_S``."""
        self.start(stop)
        try:
            self.stages.wait(stop, on_tick=self._tick)
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


def close_translator(pipeline: Pipeline) -> None:
    """Release what the translator holds beyond this process (a cluster connection)."""
    close = getattr(pipeline.translator, "close", None)
    if callable(close):
        close()


def wait_for_subscribers(publisher: Publisher, count: int, stop: threading.Event) -> None:
    if count <= 0:
        return
    log(f"waiting for {count} subscriber(s) on {publisher.address}")
    while not stop.is_set() and publisher.poll_subscriptions(100) < count:
        pass


def serve_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="s2i-serve", description="Generation server: PULL audio from s2i-capture nodes, "
                                       "publish generated images on PUB.")
    parser.add_argument("--bind", default="tcp://127.0.0.1:5555",
                        help="address to PULL audio on (default: tcp://127.0.0.1:5555, this "
                             "machine only; e.g. tcp://0.0.0.0:5555 opens it)")
    parser.add_argument("--max-streams", type=int, default=DEFAULT_MAX_STREAMS, metavar="N",
                        help=f"most live streams; newcomers past it are refused "
                             f"(default: {DEFAULT_MAX_STREAMS})")
    parser.add_argument("--idle-expiry", type=float, default=IDLE_EXPIRY_S, metavar="S",
                        help=f"forget a stream silent this long (default: {IDLE_EXPIRY_S:g} s)")
    parser.add_argument("--stats-file", type=Path, default=None, metavar="PATH",
                        help="keep the counters and each stage's thread CPU time as JSON in "
                             f"PATH, rewritten every {STATS_EVERY_S:g} s (for benchmarks)")
    add_pipeline_args(parser)
    add_batching_args(parser)
    add_server_security_args(parser, nodes=True)
    args = parser.parse_args(argv)
    check_address(args.bind, "audio input (--bind)")
    check_address(args.pub, "publisher (--pub)")
    if args.stats_file is not None and not args.stats_file.parent.is_dir():
        raise S2IError(f"--stats-file {args.stats_file}: its folder does not exist")
    pipeline = open_pipeline(args)
    max_batch, max_wait_s = batching(args, pipeline.backend)
    ctx = zmq.Context()
    publisher = loop = security = None
    ended = True
    try:
        with stop_on_signals() as stop:
            security = server_security(args, ctx)
            publisher = Publisher(ctx, args.pub, args.topic, pipeline.info(), security=security)
            loop = NetworkLoop(pipeline, publisher, ctx, args.bind, max_batch, max_wait_s,
                               args.max_streams, args.idle_expiry, args.encode_threads,
                               security=security, stats_file=args.stats_file)
            log(f"serving on {loop.address} -> {publisher.address} "
                f"(backend {pipeline.backend}, max batch {max_batch}, max wait "
                f"{max_wait_s * 1000:g} ms, host {socketlib.gethostname()})")
            wait_for_subscribers(publisher, args.wait_subscribers, stop)
            if not stop.is_set():
                ended = loop.run(stop)
            if ended:       # the publishing thread is done: tell subscribers the streams end
                for sid in list(loop.ingress.streams):
                    publisher.end(sid, "server-stopped", delay_s=0)
                publisher.flush_ends(force=True)
            log(f"published {loop.frames} frames")
            code = exit_code(stop)
    finally:
        close_translator(pipeline)
        if ended:
            if publisher is not None:
                publisher.close(END_LINGER_MS)
            if security is not None:
                security.close()
            ctx.destroy(linger=0)   # closes any socket left open
    if not ended:
        # A model call is still running (a huge batch on a slow backend): nothing it holds
        # needs saving, so exit now rather than wait for it.
        log("a stage was still busy at shutdown; exiting without waiting for it")
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: serve_main(argv))


if __name__ == "__main__":
    sys.exit(main())
