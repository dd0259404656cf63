"""``s2i-stream``: the whole chain in one process: source -> ring -> loop -> PUB.

    s2i-stream --mic [--device NAME|INDEX] [--export runs/demo/export] [--hop 0.5] [--samples 4]
    s2i-stream --file clip.mp4 [--realtime]
    arecord -f S16_LE -r 16000 -c 1 | s2i-stream --stdin --rate 16000 --channels 1 --format s16
"""

from __future__ import annotations

import argparse
import sys
import threading

import zmq

from runtime.audio.decode import iter_audio_blocks
from runtime.audio.ring import AudioRing
from runtime.audio.sources import (
    Source,
    add_source_args,
    chosen_source,
    list_devices,
    open_live_source,
)
from runtime.cli import exit_code, log, stop_on_signals
from runtime.errors import S2IError, run_cli
from runtime.frontend import FrontEndConfig
from runtime.model.manifest import load_export_manifest
from runtime.resilience import raise_open_file_limit
from runtime.serve.engine import close_translator, wait_for_subscribers
from runtime.serve.options import add_pipeline_args, open_pipeline
from runtime.serve.stages import run_file, run_ring
from runtime.wire.protocol import Publisher
from runtime.wire.security import add_server_security_args, check_address, server_security

FLUSH_MS = 2000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s2i-stream", description="Sound to images, live: capture, translate and publish "
                                        "generated images on a ZeroMQ PUB socket.")
    add_source_args(parser)
    add_pipeline_args(parser)
    add_server_security_args(parser, nodes=False)
    parser.add_argument("--stream-id", default="main", help="stream id in the headers")
    return parser


def end_reason(kind: str, stop: threading.Event) -> str:
    """Why the stream ends (the protocol's ``end`` message)."""
    if stop.is_set():
        return "server-stopped"
    return {"file": "end-of-file", "stdin": "end-of-input"}.get(kind, "source-stopped")


def stream_main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list_devices:
        print("\n".join(list_devices()) or "no input devices")
        return 0
    kind = chosen_source(args)
    check_address(args.pub, "publisher (--pub)")
    raise_open_file_limit()     # every subscriber connection is a file descriptor
    pipeline = None
    if args.cluster:   # the export lives with the deployment: its manifest comes from there
        pipeline = open_pipeline(args)
        front_end = pipeline.front_end
    else:              # cheap checks first, so a bad file or device fails before models load
        front_end = FrontEndConfig.from_dict(
            load_export_manifest(args.export, verify_hashes=False)["front_end"])
    ring = AudioRing(front_end.n_samples * 4)
    source: Source | None = None
    offline = kind == "file" and not args.realtime
    if offline and args.loop:
        raise S2IError("--loop needs --realtime (a looped file never ends)")
    if offline:
        next(iter(iter_audio_blocks(args.file, front_end.sample_rate)))
    else:
        source = open_live_source(args, ring.write, front_end.sample_rate)
    ctx = zmq.Context()
    publisher = security = None
    linger_ms = 0
    try:
        security = server_security(args, ctx)
        if pipeline is None:
            pipeline = open_pipeline(args)
        with stop_on_signals() as stop:
            publisher = Publisher(ctx, args.pub, args.topic, pipeline.info(), security=security)
            log(f"publishing on {publisher.address} (backend {pipeline.info()['backend']}, "
                f"hop {pipeline.hop_seconds:g} s, {pipeline.samples} sample(s) per window)")
            wait_for_subscribers(publisher, args.wait_subscribers, stop)
            if offline:
                count = run_file(pipeline, publisher, args.file, stop, args.stream_id)
            else:
                assert source is not None
                source.start()
                count = run_ring(pipeline, publisher, ring, stop, args.stream_id,
                                 finished=source.finished)
                source.stop()
                source.raise_error()
            publisher.end(args.stream_id, end_reason(kind, stop), delay_s=0)
            publisher.flush_ends(force=True)
            log(f"published {count} frames")
            linger_ms = 0 if stop.is_set() else FLUSH_MS   # a finished file flushes its frames
            return exit_code(stop)
    except BaseException:
        if source is not None:
            source.stop()
        raise
    finally:
        if pipeline is not None:
            close_translator(pipeline)
        if publisher is not None:
            publisher.close(linger_ms)
        if security is not None:
            security.close()
        ctx.destroy(linger=0)   # closes any socket left open; closed ones keep their linger


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: stream_main(argv))


if __name__ == "__main__":
    sys.exit(main())
