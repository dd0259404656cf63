"""Newest-only subscribers: how often a slow consumer is handed a stale frame.

A publisher (the runtime's ``Publisher``, XPUB on tcp://127.0.0.1) sends a 96x96 frame every
``--hop`` seconds; a consumer takes ``--consumer`` seconds per frame and asks for the newest
frame each time. A frame is **stale** when it is older than the newest frame published
before the consumer asked. Side by side in one run:

- ``nonblocking``: protocol 1's recipe: ``RCVHWM = 1`` and a non-blocking drain (what a
  client of docs/PROTOCOL.md version 1 did);
- ``subscriber``: ``runtime.wire.client.Subscriber(newest_only=True)``: the same, but draining
  until no message came for 20 ms (``DRAIN_TIMEOUT_S``).

    python -m benchmarks newest-only [--consumer 2.0] [--hop 0.25] [--frames 30]
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from benchmarks import report
from runtime.config import config_json, parse_config
from runtime.wire.client import Subscriber
from runtime.wire.protocol import DEFAULT_TOPIC, Publisher, decode_header, encode_frame

RESULTS = Path(__file__).parent / "results"


class FramePublisher:
    """Publishes a small frame every ``hop_s`` in its own thread; ``newest`` is the last seq
    sent (-1 before the first)."""

    def __init__(self, hop_s: float, encoding: str = "png") -> None:
        self.ctx = zmq.Context()
        self.publisher = Publisher(self.ctx, "tcp://127.0.0.1:*", DEFAULT_TOPIC,
                                   {"backend": "benchmark"})
        self.address, self.hop_s, self.encoding = self.publisher.address, hop_s, encoding
        self.newest = -1
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = np.random.default_rng(0)

    def _run(self) -> None:
        seq, next_time = 0, time.monotonic()
        while not self._stop.is_set():
            self.publisher.poll_subscriptions(max(0, int((next_time - time.monotonic()) * 1000)))
            if time.monotonic() < next_time:
                continue
            images = self._rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
            self.publisher.publish(encode_frame(DEFAULT_TOPIC, {"stream": "bench", "seq": seq},
                                                images, None, self.encoding))
            self.newest = seq
            seq += 1
            next_time += self.hop_s

    def __enter__(self) -> FramePublisher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.publisher.close()
        self.ctx.term()


def nonblocking_consumer(address: str) -> tuple[Callable[[], int], Callable[[], None]]:
    """Protocol 1's recipe: RCVHWM 1, one blocking receive, then drain with NOBLOCK."""
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.connect(address)
    sub.setsockopt(zmq.SUBSCRIBE, DEFAULT_TOPIC.encode())

    def take() -> int:
        seq = -1
        while seq < 0:
            parts = sub.recv_multipart()
            while True:
                header = decode_header(parts)
                if header.get("kind") == "frame":
                    seq = int(header["seq"])
                try:
                    parts = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
        return seq

    def close() -> None:
        sub.close(linger=0)
        ctx.term()

    return take, close


def subscriber_consumer(address: str) -> tuple[Callable[[], int], Callable[[], None]]:
    sub = Subscriber(address, newest_only=True)

    def take() -> int:
        frame = sub.receive(30)
        assert frame is not None, "no frame within 30 s"
        return frame.seq

    return take, sub.close


CONSUMERS = {"nonblocking": nonblocking_consumer, "subscriber": subscriber_consumer}


def measure_stale(consumer: str, consumer_s: float, hop_s: float, frames: int) -> dict[str, Any]:
    """Run one consumer; returns counts and the stale fraction."""
    with FramePublisher(hop_s) as publisher:
        take, close = CONSUMERS[consumer](publisher.address)
        try:
            while publisher.newest < 2:          # subscribed and frames flowing
                take()
            stale, lags = 0, []
            for _ in range(frames):
                time.sleep(consumer_s)           # the slow consumer's work
                newest = publisher.newest        # published before we asked
                seq = take()
                lags.append(newest - seq)
                stale += seq < newest
        finally:
            close()
    return {"consumer": consumer, "consumer_s": consumer_s, "hop_s": hop_s, "frames": frames,
            "stale": stale, "stale_fraction": round(stale / frames, 4),
            "max_lag_frames": max(lags), "mean_lag_frames": round(float(np.mean(lags)), 3)}


@dataclass
class NewestOnlyConfig:
    consumer: float = field(default=2.0, metadata={"help": "seconds per frame"})
    hop: float = field(default=0.25, metadata={"help": "seconds between frames"})
    frames: int = field(default=30, metadata={"help": "frames taken per consumer"})
    out: Path = RESULTS / "newest_only.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_config(NewestOnlyConfig, sys.argv[1:] if argv is None else argv,
                        "python -m benchmarks newest-only", __doc__.split("\n\n")[0])
    rows = []
    for consumer in CONSUMERS:
        row = measure_stale(consumer, args.consumer, args.hop, args.frames)
        print(json.dumps(row))
        rows.append(row)
    record = {"benchmark": "newest-only", "machine": report.machine_info(),
              "versions": report.versions(), "config": config_json(args), "rows": rows,
              "note": "the machine was shared with other work while this ran"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0
