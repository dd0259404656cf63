"""The generation loop and ``s2i-serve``: audio windows -> features -> encoder -> K images -> PUB.

``Pipeline`` is the model part, usable as a library (benchmarks time it):
``pipeline.process_window(audio, capture_time)`` -> ``(header, images [K,H,W,3] uint8,
uncertainty [H,W] uint8 | None)`` and ``pipeline.message(...)`` -> the multipart PUB message.
``run_file``/``run_ring``/``NetworkLoop`` drive it from a file, a ring buffer fed by a live
source, or capture nodes over ZeroMQ PUSH/PULL.
"""

from __future__ import annotations

import argparse
import json
import socket as socketlib
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from runtime.audio_io import StreamResampler
from runtime.cli import exit_code, log, stop_on_signals
from runtime.errors import S2IError, run_cli
from runtime.frontend import FrontEndConfig, log_mel
from runtime.masks import draw_masks
from runtime.protocol import (
    DEFAULT_TOPIC,
    ENCODINGS,
    PROTOCOL_VERSION,
    Publisher,
    bind,
    decode_audio,
    encode_frame,
    images_to_uint8,
    uncertainty_map,
)
from runtime.ring import AudioRing

DEFAULT_EXPORT = "runs/demo/export"
MIN_HOP_SECONDS = 0.05


class StatusLine:
    """A one-line summary on stderr every ``every_s`` seconds while frames flow."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s, self.count, self._next = every_s, 0, time.monotonic() + every_s

    def update(self, header: dict[str, Any]) -> None:
        self.count += 1
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        t = header.get("timings_ms", {})
        log(f"{self.count} frames; last: seq {header.get('seq')} of {header.get('stream')}, "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items())
            + f", capture->publish {1000 * (header['publish_time'] - header['capture_time']):.0f}"
            f" ms, peak {header.get('peak', 0):.2f}")


class Pipeline:
    """One translator plus the per-window work: features, encoder, K generator samples."""

    def __init__(self, translator: Any, samples: int = 1, hop_seconds: float = 1.0,
                 uncertainty: bool = False, encoding: str = "png", seed: int | None = None,
                 topic: str = DEFAULT_TOPIC) -> None:
        manifest = translator.manifest
        self.translator = translator
        self.front_end = FrontEndConfig.from_dict(manifest["front_end"])
        self.dropout = getattr(translator, "dropout", None) or manifest["dropout"]
        self.samples, self.uncertainty, self.encoding = int(samples), uncertainty, encoding
        self.topic = topic
        if self.samples < 1:
            raise S2IError(f"--samples must be at least 1, got {samples}")
        if encoding not in ENCODINGS:
            raise S2IError(f"--encoding must be one of {ENCODINGS}, got {encoding!r}")
        if uncertainty and self.samples < 2:
            raise S2IError("--uncertainty needs --samples 2 or more (std across samples)")
        window = self.front_end.window_seconds
        if not MIN_HOP_SECONDS <= hop_seconds <= window:
            raise S2IError(f"--hop must be between {MIN_HOP_SECONDS} and the window "
                           f"({window:g} s), got {hop_seconds}")
        self.hop_seconds = float(hop_seconds)
        self.window = self.front_end.n_samples
        self.hop = int(round(hop_seconds * self.front_end.sample_rate))
        self._check_encoder_input(manifest)
        self.rng = np.random.default_rng(seed)
        self._seq: dict[str, int] = {}
        self.frames = 0
        self.status = StatusLine()

    def _check_encoder_input(self, manifest: dict[str, Any]) -> None:
        inputs = manifest.get("models", {}).get("encoder", {}).get("inputs") or []
        if inputs:
            shape = list(inputs[0].get("shape", []))[1:]
            want = [1, self.front_end.n_mels, self.front_end.n_frames]
            if shape and shape != want:
                raise S2IError(f"export's encoder expects input {shape} but its front end "
                               f"gives {want}; the manifest does not match the model")

    @property
    def sample_rate(self) -> int:
        return self.front_end.sample_rate

    def info(self) -> dict[str, Any]:
        """What the hello message tells subscribers about this stream."""
        manifest = self.translator.manifest
        return {"backend": getattr(self.translator, "backend", "?"),
                "classes": manifest.get("classes", []), "samples": self.samples,
                "window_s": self.front_end.window_seconds, "hop_s": self.hop_seconds,
                "sample_rate": self.sample_rate, "encoding": self.encoding,
                "uncertainty": self.uncertainty}

    def process_window(self, audio: np.ndarray, capture_time: float, stream_id: str = "main",
                       position_s: float | None = None
                       ) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
        """One 1-s window -> (header, K images uint8 [K,H,W,3], uncertainty [H,W] or None)."""
        t0 = time.perf_counter()
        # Silence and clipping are valid input; a broken source's NaN/inf must not stop us.
        audio = np.nan_to_num(np.asarray(audio, np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
        features = log_mel(audio, self.front_end)[None, None]       # [1, 1, 128, 100]
        t1 = time.perf_counter()
        z = np.asarray(self.translator.encode(features), np.float32)   # [1, D]
        t2 = time.perf_counter()
        z = np.repeat(z, self.samples, axis=0)
        masks = draw_masks(self.dropout, self.samples, self.rng)
        out = np.asarray(self.translator.generate(z, masks))         # [K, 3, H, W]
        t3 = time.perf_counter()
        images = images_to_uint8(out)
        unc = uncertainty_map(out) if self.uncertainty else None
        seq = self._seq.get(stream_id, 0)
        self._seq[stream_id] = seq + 1
        header = {
            "protocol": PROTOCOL_VERSION, "stream": stream_id, "seq": seq,
            "capture_time": float(capture_time), "position_s": position_s,
            "window_s": self.front_end.window_seconds, "hop_s": self.hop_seconds,
            "sample_rate": self.sample_rate, "backend": getattr(self.translator, "backend", "?"),
            "rms": float(np.sqrt(np.mean(audio ** 2))), "peak": float(np.abs(audio).max()),
            "timings_ms": {"features": round((t1 - t0) * 1000, 3),
                           "encoder": round((t2 - t1) * 1000, 3),
                           "generator": round((t3 - t2) * 1000, 3)},
        }
        return header, images, unc

    def message(self, audio: np.ndarray, capture_time: float, stream_id: str = "main",
                position_s: float | None = None) -> list[bytes]:
        header, images, unc = self.process_window(audio, capture_time, stream_id, position_s)
        parts = encode_frame(self.topic, header, images, unc, self.encoding)
        self.frames += 1
        self.status.update(json.loads(parts[1]))
        return parts


# --- loops ----------------------------------------------------------------------------------

def run_file(pipeline: Pipeline, publisher: Publisher, path: str, stop: threading.Event,
             stream_id: str = "main") -> int:
    """Every window of a file, as fast as the model allows; returns the frames published."""
    from runtime.sources import file_windows

    count = 0
    for window, end in file_windows(path, pipeline.sample_rate, pipeline.window, pipeline.hop):
        if stop.is_set():
            break
        # A file's window is "captured" when it has been decoded; position_s says where.
        position = end / pipeline.sample_rate
        publisher.publish(pipeline.message(window, time.time(), stream_id, position))
        count += 1
    return count


def run_ring(pipeline: Pipeline, publisher: Publisher, ring: AudioRing, stop: threading.Event,
             stream_id: str = "main", finished: threading.Event | None = None) -> int:
    """Every hop, the newest window of a live ring; skips ahead (never queues) when late."""
    next_total, count, skipped = pipeline.window, 0, 0
    while not stop.is_set():
        if not ring.wait_for(next_total, timeout=0.05):
            publisher.poll_subscriptions()
            if ring.closed or (finished is not None and finished.is_set()
                               and ring.written < next_total):
                break
            continue
        audio, capture_time, written = ring.latest(pipeline.window)  # type: ignore[misc]
        publisher.publish(pipeline.message(audio, capture_time, stream_id,
                                           written / pipeline.sample_rate))
        count += 1
        next_total += pipeline.hop
        while next_total <= written:          # late: drop stale hops, keep the newest
            next_total += pipeline.hop
            skipped += 1
    if skipped:
        log(f"{stream_id}: skipped {skipped} late hops (the model is slower than the hop)")
    return count


@dataclass
class StreamState:
    ring: AudioRing
    resampler: StreamResampler
    rate: int
    channels: int
    next_total: int
    last_seq: int = -1
    last_seen: float = field(default_factory=time.monotonic)


class NetworkLoop:
    """PULL audio from capture nodes (one ring per stream id), publish frames on PUB."""

    def __init__(self, pipeline: Pipeline, publisher: Publisher, ctx: zmq.Context,
                 bind_address: str, idle_expiry_s: float = 30.0) -> None:
        self.pipeline, self.publisher = pipeline, publisher
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, 200)
        bind(self.pull, bind_address, "audio input (PULL)")
        self.address = self.pull.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.streams: dict[str, StreamState] = {}
        self.idle_expiry_s = idle_expiry_s
        self.frames = 0
        self.skipped = 0
        self.bad_messages = 0

    def _state(self, header: dict[str, Any]) -> StreamState:
        sid = str(header.get("stream", "capture"))
        rate, channels = int(header["sample_rate"]), int(header["channels"])
        seq = int(header["seq"])
        state = self.streams.get(sid)
        if state is None or state.rate != rate or state.channels != channels \
                or seq <= state.last_seq:
            if state is not None:
                log(f"{sid}: capture node restarted or changed format; resetting its buffer")
            state = StreamState(AudioRing(self.pipeline.window * 4),
                                StreamResampler(rate, self.pipeline.sample_rate, channels),
                                rate, channels, self.pipeline.window)
            self.streams[sid] = state
        state.last_seq, state.last_seen = seq, time.monotonic()
        return state

    def handle(self, parts: list[bytes]) -> str | None:
        """Write one audio message into its stream's ring; returns the stream id, or None
        (logged and ignored) for a malformed message. Publishes nothing."""
        try:
            header, samples = decode_audio(parts)
            capture_time = float(header["capture_time"])
            state = self._state(header)
        except (S2IError, KeyError, ValueError, TypeError, OverflowError) as exc:
            self.bad_messages += 1
            if self.bad_messages <= 5:
                log(f"ignoring a bad audio message: {exc}")
            return None
        state.ring.write(state.resampler.process(samples), capture_time)
        return str(header.get("stream", "capture"))

    def drain(self, limit: int = 2000) -> int:
        """Read every pending audio message (at most ``limit``, so a flood cannot starve the
        model) into its ring without blocking; returns how many were read."""
        count = 0
        while count < limit:
            try:
                parts = self.pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return count
            self.handle(parts)
            count += 1
        return count

    def publish_due(self, sid: str) -> bool:
        """One frame from the newest window of ``sid`` if its next window is due; stale
        hops are skipped (never queued), so latency stays bounded when the model is slow."""
        state = self.streams.get(sid)
        if state is None or state.ring.written < state.next_total:
            return False
        audio, capture_time, written = state.ring.latest(self.pipeline.window)  # type: ignore
        self.publisher.publish(self.pipeline.message(
            audio, capture_time, sid, written / self.pipeline.sample_rate))
        self.frames += 1
        state.next_total += self.pipeline.hop
        while state.next_total <= written:
            state.next_total += self.pipeline.hop
            self.skipped += 1
        return True

    def step(self, timeout_ms: int = 50) -> int:
        """Drain all pending audio, then publish at most one frame per stream; returns the
        frames published."""
        self.publisher.poll_subscriptions()
        if not self.pull.poll(timeout_ms, zmq.POLLIN):
            return 0
        self.drain()
        return sum(self.publish_due(sid) for sid in list(self.streams))

    def expire_idle(self) -> None:
        now = time.monotonic()
        for sid in [s for s, st in self.streams.items()
                    if now - st.last_seen > self.idle_expiry_s]:
            del self.streams[sid]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.step()
            self.expire_idle()
        if self.skipped:
            log(f"skipped {self.skipped} late hops (the model is slower than the hop)")

    def close(self) -> None:
        self.pull.close(linger=0)


# --- shared CLI pieces ----------------------------------------------------------------------

def add_pipeline_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model and publishing")
    g.add_argument("--export", default=DEFAULT_EXPORT,
                   help=f"export folder (default: {DEFAULT_EXPORT})")
    g.add_argument("--backend", default="auto",
                   help="auto | tensorrt | onnxruntime-cuda | onnxruntime-cpu (default: auto)")
    g.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    g.add_argument("--hop", type=float, default=1.0,
                   help="seconds between windows (1-s window; down to 0.25 or less)")
    g.add_argument("--samples", type=int, default=1,
                   help="K images per window, each with fresh dropout masks (default: 1)")
    g.add_argument("--uncertainty", action="store_true",
                   help="also send the per-pixel std across the K samples")
    g.add_argument("--encoding", default="png", choices=ENCODINGS)
    g.add_argument("--seed", type=int, default=None, help="seed for the dropout masks")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for ONNX Runtime")
    g.add_argument("--pub", default="tcp://*:5556", help="PUB address to bind")
    g.add_argument("--topic", default=DEFAULT_TOPIC)
    g.add_argument("--wait-subscribers", type=int, default=0, metavar="N",
                   help="start only once N subscriptions have arrived (no frame is missed)")


def open_pipeline(args: argparse.Namespace) -> Pipeline:
    from runtime.backends import open_translator  # onnxruntime/TensorRT; never torch

    translator = open_translator(args.export, backend=args.backend, precision=args.precision,
                                 threads=args.threads)
    return Pipeline(translator, samples=args.samples, hop_seconds=args.hop,
                    uncertainty=args.uncertainty, encoding=args.encoding, seed=args.seed,
                    topic=args.topic)


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
    parser.add_argument("--bind", default="tcp://*:5555",
                        help="address to PULL audio on (default: tcp://*:5555)")
    add_pipeline_args(parser)
    args = parser.parse_args(argv)
    pipeline = open_pipeline(args)
    ctx = zmq.Context()
    publisher = loop = None
    try:
        with stop_on_signals() as stop:
            publisher = Publisher(ctx, args.pub, args.topic, pipeline.info())
            loop = NetworkLoop(pipeline, publisher, ctx, args.bind)
            log(f"serving on {loop.address} -> {publisher.address} "
                f"(backend {pipeline.info()['backend']}, host {socketlib.gethostname()})")
            wait_for_subscribers(publisher, args.wait_subscribers, stop)
            loop.run(stop)
            log(f"published {loop.frames} frames")
            return exit_code(stop)
    finally:
        if loop is not None:
            loop.close()
        if publisher is not None:
            publisher.close()
        ctx.destroy(linger=0)   # closes any socket left open; closed ones keep their linger


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: serve_main(argv))


if __name__ == "__main__":
    sys.exit(main())
