"""``s2i-capture``: a capture node pushing audio to a generation server (``s2i-serve``).

    s2i-capture --mic --connect tcp://gpu-host:5555
    s2i-capture --file clip.wav --connect tcp://127.0.0.1:5555     (paced like a live source)

The source hands blocks of ``--block-ms`` (default 250 ms) to a bounded queue (oldest dropped
when full); the main thread sends them as ``[b"audio", header, float32 samples]`` on PUSH
without ever blocking: when the server is unreachable or slow, audio is dropped, not queued
(live audio goes stale). Larger blocks cost the server less per second of audio (one message
each); a window whose end falls inside a block waits for that block (docs/RUNTIME.md).

Every option is checked before anything starts, with the server's own rules
(``runtime.wire.protocol.check_audio_values``): what the server would refuse is a one-line error,
exit 2. PUSH has no acknowledgement, so the closing line counts blocks handed to a connected
server, not blocks the server accepted; with none handed over it is an error (exit 2). A
refused handshake ends the node with one line (exit 2), or with ``--retry`` is logged and
retried with backoff (``runtime.wire.client.ClientSocket``).
"""

from __future__ import annotations

import math
import queue
import re
import socket as socketlib
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from runtime.audio.sources import (
    SOURCE_TITLE,
    SourceOptions,
    chosen_source,
    list_devices,
    open_live_source,
)
from runtime.cli import exit_code, log, stop_on_signals
from runtime.config import parse_config
from runtime.errors import S2IError, run_cli
from runtime.wire.client import ClientSocket
from runtime.wire.protocol import check_audio_values, encode_audio
from runtime.wire.security import SECURITY_TITLE, ClientCurve, check_address, warn_if_open

QUEUE_BLOCKS = 100      # ~5 s of 50-ms blocks
QUEUE_SECONDS = 5.0     # the queue holds this much audio, whatever the block
PUSH_SNDHWM = 50
CAPTURE_BLOCK_S = 0.25  # audio per message: 4 messages per 1-s window (hops of 0.25 s align)
BLOCK_MS_RANGE = (10.0, 1000.0)


class BlockQueue:
    """A bounded queue that drops its oldest block rather than making the producer wait."""

    def __init__(self, maxsize: int = QUEUE_BLOCKS) -> None:
        self.queue: queue.Queue[tuple[np.ndarray, float]] = queue.Queue(maxsize)
        self.dropped = 0
        self._lock = threading.Lock()

    def put(self, block: np.ndarray, capture_time: float) -> None:
        with self._lock:
            while True:
                try:
                    self.queue.put_nowait((np.asarray(block, np.float32).copy(), capture_time))
                    return
                except queue.Full:
                    try:
                        self.queue.get_nowait()
                        self.dropped += 1
                    except queue.Empty:
                        pass

    def get(self, timeout: float) -> tuple[np.ndarray, float] | None:
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def drain(self) -> list[tuple[np.ndarray, float]]:
        """Every block still queued, oldest first, without waiting."""
        blocks = []
        while True:
            try:
                blocks.append(self.queue.get_nowait())
            except queue.Empty:
                return blocks


def default_stream_id(host: str | None = None) -> str:
    """``capture-<host name>`` made a valid stream id: characters outside ``[A-Za-z0-9._-]``
    become ``-``, at most 64 characters."""
    host = socketlib.gethostname() if host is None else host
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"capture-{host}")[:64]


class AudioSender:
    """Numbers blocks and sends them on PUSH without blocking (a busy server drops them)."""

    def __init__(self, push: zmq.Socket, stream_id: str, rate: int) -> None:
        self.push, self.stream_id, self.rate = push, stream_id, rate
        self.seq, self.unsent = 0, 0

    def send(self, block: np.ndarray, capture_time: float, end: bool = False) -> None:
        try:
            self.push.send_multipart(encode_audio(self.stream_id, self.seq, block, self.rate,
                                                  capture_time, end=end), zmq.NOBLOCK)
        except zmq.Again:
            self.unsent += 1
        self.seq += 1

    def finish(self) -> None:
        """Tell the server this node stopped (it then ends the stream for subscribers)."""
        self.send(np.zeros(0, np.float32), time.time(), end=True)


@dataclass
class CaptureConfig:
    """``s2i-capture``'s settings."""

    source: SourceOptions = field(default_factory=SourceOptions,
                                  metadata={"title": SOURCE_TITLE})
    connect: str = field(default="tcp://127.0.0.1:5555", metadata={
        "help": "the server's audio address (default: tcp://127.0.0.1:5555)"})
    send_rate: int = field(default=16000, metadata={
        "help": "sample rate sent to the server, 8000-192000 (default: 16000)"})
    stream_id: str = field(default_factory=default_stream_id, metadata={
        "help": "stream id, 1-64 characters of [A-Za-z0-9._-]; keep it across restarts "
                "(default: capture-HOSTNAME, made valid)"})
    block_ms: float = field(default=CAPTURE_BLOCK_S * 1000, metadata={
        "metavar": "MS", "help": f"audio per message (default: {CAPTURE_BLOCK_S * 1000:g} ms; "
                                 "larger costs the server less, a window ending inside a "
                                 "block waits for it)"})
    security: ClientCurve = field(default_factory=ClientCurve,
                                  metadata={"title": SECURITY_TITLE})

    def check(self) -> None:
        """Every option, with the server's own rules, before anything starts."""
        chosen_source(self.source)
        check_audio_values(self.stream_id, self.send_rate, "--stream-id and --send-rate")
        check_address(self.connect, "audio output (--connect)")
        low, high = BLOCK_MS_RANGE
        if not low <= self.block_ms <= high:
            raise S2IError(f"--block-ms must be between {low:g} and {high:g}, "
                           f"got {self.block_ms:g}")


def setup_push(push: zmq.Socket) -> None:
    push.setsockopt(zmq.SNDHWM, PUSH_SNDHWM)
    push.setsockopt(zmq.IMMEDIATE, 1)     # no server connected -> drop, don't queue


def capture_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(CaptureConfig, sys.argv[1:] if argv is None else argv, "s2i-capture",
                       "Capture audio and PUSH it to an s2i-serve server.")
    if cfg.source.list_devices:
        print("\n".join(list_devices()) or "no input devices")
        return 0
    cfg.check()
    keys = cfg.security.keys()
    block_s = cfg.block_ms / 1000
    blocks = BlockQueue(max(2, math.ceil(QUEUE_SECONDS / block_s)))
    source = open_live_source(cfg.source, blocks.put, cfg.send_rate, block_s)  # a file is paced
    ctx = zmq.Context()
    linger = 0
    conn = None
    try:
        conn = ClientSocket(ctx, zmq.PUSH, cfg.connect, "audio output (PUSH)", keys, setup_push,
                            retry=cfg.security.retry)
        warn_if_open(cfg.connect, "audio", curve=keys is not None, bound=False)
        with stop_on_signals() as stop:
            source.start()
            log(f"capturing {source.name} -> {cfg.connect} as stream {cfg.stream_id!r}")
            sender = AudioSender(conn.socket, cfg.stream_id, cfg.send_rate)
            while not stop.is_set():
                if conn.check():
                    sender.push = conn.socket
                item = blocks.get(timeout=0.1)
                if item is not None:
                    sender.send(*item)
                elif source.finished.is_set():
                    for block in blocks.drain():    # what came in after the last get
                        sender.send(*block)
                    break
            source.stop()
            sender.finish()     # stopped or finished: the server ends the stream at once
            source.raise_error()
            conn.check()        # a refusal seen only now is still an error, not "sent"
            handed = sender.seq - sender.unsent
            log(f"handed {handed} of {sender.seq} blocks to the server's connection "
                f"({sender.unsent} unsent: no server connected or its queue full; "
                f"{blocks.dropped} dropped in the queue); PUSH has no acknowledgement: the "
                "server logs what it refuses")
            linger = 300 if stop.is_set() else 1000   # flush the last blocks and the end
            if handed == 0 and not stop.is_set():
                raise S2IError(f"no audio reached a server at {cfg.connect} (none "
                               "connected: is s2i-serve running with that --bind address?)")
            return exit_code(stop)
    finally:
        source.stop()
        if conn is not None:
            conn.close(linger)
        ctx.destroy(linger=0)   # closes any socket left open; closed ones keep their linger


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: capture_main(argv))


if __name__ == "__main__":
    sys.exit(main())
