"""The streaming half of the latency benchmark: the runtime's own loop fed from a file, a real
ZeroMQ subscriber in another process, one record per timed window.

Per 1-s window it measures the time from the window's last audio sample entering the ring
buffer (its capture stamp) to the generated image(s) being received by the subscriber. The
chain is the runtime's own: ``AudioRing`` -> ``run_ring`` -> ``Pipeline`` (features, encoder,
generator xK) -> PNG encoding -> ``Publisher`` (XPUB on tcp://127.0.0.1) ->
``runtime.wire.client.Subscriber``. Windows are paced by consumption (``ConsumptionFeeder``): the
next hop of audio is written the moment the previous window's image arrives, so no window
waits in a queue and hundreds of windows take seconds, not minutes; each window is still timed
from its own capture stamp.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import report
from runtime.audio.ring import AudioRing
from runtime.errors import S2IError
from runtime.serve.pipeline import Pipeline
from runtime.serve.stages import run_ring
from runtime.wire.protocol import DEFAULT_TOPIC, Publisher

ADDRESS = "tcp://127.0.0.1:*"


def subscriber_process(address: str, topic: str, out: Any, stop: Any) -> None:
    """A real subscriber in its own process: every frame -> (stream, seq, stamps, timings)."""
    from runtime.wire.client import Subscriber

    try:
        with Subscriber(address, topic) as sub:
            out.put(("ready", sub.wait_ready(timeout_s=60)))
            while not stop.is_set():
                frame = sub.receive(timeout_s=0.1)
                if frame is None:
                    continue
                received = time.time()      # after receiving and decoding the images
                h = frame.header
                out.put(("frame", h["stream"], int(h["seq"]), float(h["capture_time"]),
                         float(h["publish_time"]), received,
                         dict(h.get("timings_ms", {})), len(frame.images)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


@dataclass
class Stream:
    """One publisher and one subscriber process, shared by every row of a run."""

    publisher: Publisher
    frames: Any            # mp.Queue of subscriber messages
    stop: Any              # mp.Event
    process: Any           # mp.Process

    def next_frame(self, stream_id: str, seq: int, timeout_s: float) -> tuple[Any, ...]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                msg = self.frames.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise S2IError(f"no image for window {seq} of {stream_id} within "
                               f"{timeout_s:g} s (subscriber alive: "
                               f"{self.process.is_alive()})") from None
            if msg[0] == "error":
                raise S2IError(f"benchmark subscriber failed: {msg[1]}")
            if msg[0] == "frame" and msg[1] == stream_id and msg[2] == seq:
                return msg


def open_stream(ctx: Any, info: dict[str, Any]) -> Stream:
    publisher = Publisher(ctx, ADDRESS, DEFAULT_TOPIC, info)
    spawn = mp.get_context("spawn")   # no fork of a process holding torch/ORT threads
    frames, stop = spawn.Queue(), spawn.Event()
    process = spawn.Process(target=subscriber_process, daemon=True,
                            args=(publisher.address, DEFAULT_TOPIC, frames, stop))
    stream = Stream(publisher, frames, stop, process)
    process.start()
    try:
        deadline = time.monotonic() + 60
        while publisher.poll_subscriptions(100) < 1:   # slow-joiner handshake, no sleeping
            if time.monotonic() > deadline or not process.is_alive():
                raise S2IError(f"benchmark subscriber process never subscribed to "
                               f"{publisher.address} (exit code {process.exitcode})")
        msg = frames.get(timeout=60)
        if msg[0] != "ready":
            raise S2IError(f"benchmark subscriber failed: {msg[1:]}")
    except BaseException:
        close_stream(stream)
        raise
    return stream


def close_stream(stream: Stream) -> None:
    stream.stop.set()
    stream.process.join(timeout=5)
    if stream.process.is_alive():
        stream.process.terminate()
    stream.publisher.close()


class ConsumptionFeeder:
    """Writes the file's audio into the ring one hop at a time, each time the previous
    window's image has been received (``step``), stamping the hop's last sample with the
    time it enters the ring. The file is looped as needed."""

    def __init__(self, ring: AudioRing, audio: np.ndarray, window: int, hop: int) -> None:
        self.ring, self.audio, self.window, self.hop = ring, audio, window, hop
        self.cursor = 0

    def step(self, index: int) -> None:
        n = self.window if index == 0 else self.hop
        chunk = self.audio[(self.cursor + np.arange(n)) % len(self.audio)]
        self.cursor += n
        self.ring.write(chunk, time.time())     # capture stamp of the window's last sample


def stream_row(stream: Stream, pipeline: Pipeline, audio: np.ndarray, windows: int,
               warmup: int, stream_id: str, realtime_file: Path | None = None,
               timeout_s: float = 120.0) -> list[dict[str, float]]:
    """Stream ``warmup + windows`` windows through ``run_ring``; one record per timed window.

    Paced by consumption (``ConsumptionFeeder``), or with ``realtime_file`` by the runtime's
    own ``FileSource`` playing the file at the pace of the clock (1 window per hop).
    """
    ring = AudioRing(pipeline.window * 4)
    stop = threading.Event()
    failure: list[BaseException] = []

    def loop() -> None:
        try:
            run_ring(pipeline, stream.publisher, ring, stop, stream_id)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)
            stop.set()

    feeder = ConsumptionFeeder(ring, audio, pipeline.window, pipeline.hop)
    source = None
    if realtime_file is not None:
        from runtime.audio.sources import FileSource

        source = FileSource(ring.write, pipeline.sample_rate, str(realtime_file), loop=True)
    worker = threading.Thread(target=loop, name=f"loop-{stream_id}", daemon=True)
    worker.start()
    if source is not None:
        source.start()
    records: list[dict[str, float]] = []
    try:
        for i in tqdm(range(warmup + windows), desc=stream_id, leave=False, unit="win"):
            if source is None:
                feeder.step(i)
            if failure:
                raise failure[0]
            msg = stream.next_frame(stream_id, i, timeout_s + pipeline.hop_seconds)
            if i < warmup:
                continue
            _, _, _, capture, published, received, timings, _ = msg
            e2e = (received - capture) * 1000
            rec = {"end_to_end": e2e, "transport": (received - published) * 1000,
                   **{k: float(timings.get(k, 0.0)) for k in report.STAGES if k != "transport"}}
            rec["other"] = e2e - sum(rec[k] for k in report.STAGES)
            records.append(rec)
    finally:
        if source is not None:
            source.stop()
        ring.close()
        stop.set()
        worker.join(timeout=10)
    if failure:
        raise failure[0]
    if source is not None:
        source.raise_error()
    return records
