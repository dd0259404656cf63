"""``s2i-serve``: a multi-stream inference server, the console script. Capture nodes PUSH
audio; frames go out on PUB. The engine (``NetworkLoop``: ingress and stage threads) is
runtime/serve/engine.py; this module parses the options, opens the translator, the publisher and
the security, runs the engine until a signal and ends the streams for subscribers.
"""

from __future__ import annotations

import socket as socketlib
import sys

import zmq

from runtime.cli import exit_code, log, stop_on_signals
from runtime.config import parse_config, save_config
from runtime.errors import S2IError, run_cli
from runtime.resilience import raise_open_file_limit
from runtime.serve.batching import Batching
from runtime.serve.engine import (
    END_LINGER_MS,
    NetworkLoop,
    close_translator,
    exit_after,
    wait_for_subscribers,
)
from runtime.serve.options import ServeConfig, batching, open_pipeline, stats_config_path
from runtime.serve.workers import serve_with_workers
from runtime.wire.protocol import Publisher, pub_hwm
from runtime.wire.security import check_address


def serve_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ServeConfig, sys.argv[1:] if argv is None else argv, "s2i-serve",
                       "Generation server: PULL audio from s2i-capture nodes, publish "
                       "generated images on PUB.")
    check_address(cfg.bind, "audio input (--bind)")
    check_address(cfg.publish.pub, "publisher (--pub)")
    if cfg.stats_file is not None:
        if not cfg.stats_file.parent.is_dir():
            raise S2IError(f"--stats-file {cfg.stats_file}: its folder does not exist")
        save_config(cfg, stats_config_path(cfg.stats_file))
    raise_open_file_limit()     # every connection is a file descriptor
    pipeline = open_pipeline(cfg.model, cfg.publish)
    batch_settings = Batching(*batching(cfg.batching, pipeline.backend))
    if cfg.workers > 1:
        return serve_with_workers(cfg, pipeline, batch_settings)
    ctx = zmq.Context()
    publisher = loop = security = None
    failure: S2IError | None = None
    ended = True
    try:
        with stop_on_signals() as stop:
            security = cfg.security.open(ctx)
            publisher = Publisher(ctx, cfg.publish.pub, cfg.publish.topic, pipeline.info(),
                                  sndhwm=pub_hwm(batch_settings.max_batch), security=security)
            loop = NetworkLoop(pipeline, publisher, ctx, cfg.bind, batch_settings,
                               cfg.max_streams, cfg.idle_expiry, cfg.batching.encode_threads,
                               security=security, stats_file=cfg.stats_file)
            log(f"serving on {loop.address} -> {publisher.address} "
                f"(backend {pipeline.backend}, max batch {batch_settings.max_batch}, max wait "
                f"{batch_settings.max_wait_s * 1000:g} ms, host {socketlib.gethostname()})")
            wait_for_subscribers(publisher, cfg.publish.wait_subscribers, stop)
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
    return exit_after(ended, failure, code)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: serve_main(argv))


if __name__ == "__main__":
    sys.exit(main())
