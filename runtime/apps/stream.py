"""``s2i-stream``: the whole chain in one process: source -> ring -> loop -> PUB.

    s2i-stream --mic [--device NAME|INDEX] [--export runs/demo/export] [--hop 0.5] [--samples 4]
    s2i-stream --file clip.mp4 [--realtime]
    arecord -f S16_LE -r 16000 -c 1 | s2i-stream --stdin --rate 16000 --channels 1 --format s16
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field

import zmq

from runtime.audio.decode import iter_audio_blocks
from runtime.audio.ring import AudioRing
from runtime.audio.sources import (
    SOURCE_TITLE,
    Source,
    SourceOptions,
    chosen_source,
    list_devices,
    open_live_source,
)
from runtime.cli import exit_code, log, stop_on_signals
from runtime.config import parse_config
from runtime.errors import S2IError, run_cli
from runtime.frontend import FrontEndConfig
from runtime.model.manifest import load_export_manifest
from runtime.resilience import raise_open_file_limit
from runtime.serve.engine import close_translator, wait_for_subscribers
from runtime.serve.options import ModelOptions, PublishOptions, open_pipeline
from runtime.serve.stages import run_file, run_ring
from runtime.wire.protocol import Publisher
from runtime.wire.security import SECURITY_TITLE, ServerCurve, check_address

FLUSH_MS = 2000


@dataclass
class StreamConfig:
    """``s2i-stream``'s settings."""

    source: SourceOptions = field(default_factory=SourceOptions,
                                  metadata={"title": SOURCE_TITLE})
    model: ModelOptions = field(default_factory=ModelOptions, metadata={"title": "model"})
    publish: PublishOptions = field(default_factory=PublishOptions,
                                    metadata={"title": "publishing"})
    security: ServerCurve = field(default_factory=ServerCurve,
                                  metadata={"title": SECURITY_TITLE})
    stream_id: str = field(default="main", metadata={"help": "stream id in the headers"})


def end_reason(kind: str, stop: threading.Event) -> str:
    """Why the stream ends (the protocol's ``end`` message)."""
    if stop.is_set():
        return "server-stopped"
    return {"file": "end-of-file", "stdin": "end-of-input"}.get(kind, "source-stopped")


def front_end_of(export: str) -> FrontEndConfig:
    """The export's front end, read before the models load (cheap checks first, so a bad
    file or device fails before them); with ``--cluster`` it comes from the deployment."""
    return FrontEndConfig.from_dict(
        load_export_manifest(export, verify_hashes=False)["front_end"])


def open_input(audio: SourceOptions, kind: str, ring: AudioRing, rate: int) -> Source | None:
    """The live source writing into ``ring``; None for a file run offline (its first block
    decoded now, so a bad file fails before anything starts)."""
    if kind != "file" or audio.realtime:
        return open_live_source(audio, ring.write, rate)
    if audio.loop:
        raise S2IError("--loop needs --realtime (a looped file never ends)")
    next(iter(iter_audio_blocks(str(audio.file), rate)))
    return None


def stream_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(StreamConfig, sys.argv[1:] if argv is None else argv, "s2i-stream",
                       "Sound to images, live: capture, translate and publish generated images "
                       "on a ZeroMQ PUB socket.")
    model, publish, audio = cfg.model, cfg.publish, cfg.source
    if audio.list_devices:
        print("\n".join(list_devices()) or "no input devices")
        return 0
    kind = chosen_source(audio)
    check_address(publish.pub, "publisher (--pub)")
    raise_open_file_limit()     # every subscriber connection is a file descriptor
    pipeline = open_pipeline(model, publish) if model.cluster else None
    front_end = pipeline.front_end if pipeline is not None else front_end_of(model.export)
    ring = AudioRing(front_end.n_samples * 4)
    source = open_input(audio, kind, ring, front_end.sample_rate)
    offline = source is None
    ctx = zmq.Context()
    publisher = security = None
    linger_ms = 0
    try:
        security = cfg.security.open(ctx)
        if pipeline is None:
            pipeline = open_pipeline(model, publish)
        with stop_on_signals() as stop:
            publisher = Publisher(ctx, publish.pub, publish.topic, pipeline.info(),
                                  security=security)
            log(f"publishing on {publisher.address} (backend {pipeline.info()['backend']}, "
                f"hop {pipeline.hop_seconds:g} s, {pipeline.samples} sample(s) per window)")
            wait_for_subscribers(publisher, publish.wait_subscribers, stop)
            if offline:
                count = run_file(pipeline, publisher, str(audio.file), stop, cfg.stream_id)
            else:
                assert source is not None
                source.start()
                count = run_ring(pipeline, publisher, ring, stop, cfg.stream_id,
                                 finished=source.finished)
                source.stop()
                source.raise_error()
            publisher.end(cfg.stream_id, end_reason(kind, stop), delay_s=0)
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
