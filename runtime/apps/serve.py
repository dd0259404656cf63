"""``s2i-serve``: a multi-stream inference server, the console script. Capture nodes PUSH
audio; frames go out on PUB. The engine (``NetworkLoop``: ingress and stage threads) is
runtime/serve/engine.py; this module parses the options, opens the translator, the publisher and
the security, runs the engine until a signal and ends the streams for subscribers.
"""

from __future__ import annotations

import argparse
import os
import socket as socketlib
import sys
from pathlib import Path

import zmq

from runtime.cli import exit_code, log, stop_on_signals
from runtime.errors import S2IError, run_cli
from runtime.resilience import raise_open_file_limit
from runtime.serve.engine import STATS_EVERY_S, NetworkLoop, close_translator, wait_for_subscribers
from runtime.serve.ingress import DEFAULT_MAX_STREAMS, IDLE_EXPIRY_S
from runtime.serve.options import add_batching_args, add_pipeline_args, batching, open_pipeline
from runtime.serve.workers import MAX_WORKERS, serve_with_workers
from runtime.wire.protocol import Publisher
from runtime.wire.security import add_server_security_args, check_address, server_security

END_LINGER_MS = 200   # at shutdown, let the end messages go out


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
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes for ingress, features and encoding around one "
                             "model step (default: 1, all in this process; docs/RUNTIME.md)")
    add_pipeline_args(parser)
    add_batching_args(parser)
    add_server_security_args(parser, nodes=True)
    args = parser.parse_args(argv)
    check_address(args.bind, "audio input (--bind)")
    check_address(args.pub, "publisher (--pub)")
    if not 1 <= args.workers <= MAX_WORKERS:
        raise S2IError(f"--workers must be 1-{MAX_WORKERS}, got {args.workers}")
    if args.stats_file is not None and not args.stats_file.parent.is_dir():
        raise S2IError(f"--stats-file {args.stats_file}: its folder does not exist")
    raise_open_file_limit()     # every connection is a file descriptor
    pipeline = open_pipeline(args)
    max_batch, max_wait_s = batching(args, pipeline.backend)
    if args.workers > 1:
        return serve_with_workers(args, pipeline, max_batch, max_wait_s)
    ctx = zmq.Context()
    publisher = loop = security = None
    failure: S2IError | None = None
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
                failure = loop.failure
            if ended and failure is None:   # the publisher is done: tell subscribers
                for sid in list(loop.ingress.streams):
                    publisher.end(sid, "server-stopped", delay_s=0)
                publisher.flush_ends(force=True)
            log(f"published {loop.frames} frames")
            code = exit_code(stop) if failure is None else 2
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
        if failure is not None:
            print(f"error: {failure}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(code)
    if failure is not None:
        raise failure       # one line, exit 2 (run_cli)
    return code


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: serve_main(argv))


if __name__ == "__main__":
    sys.exit(main())
