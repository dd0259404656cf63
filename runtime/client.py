"""A Python subscriber for S2I image streams.

    from runtime.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5556", newest_only=True) as sub:
        sub.wait_ready()                      # handshake: our subscription is live
        for frame in sub:                     # frame.header (dict), frame.images ([H,W,3] uint8)
            print(frame.seq, frame.header["timings_ms"])
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import zmq

from runtime.errors import S2IError
from runtime.protocol import DEFAULT_TOPIC, Frame, connect, decode_frame, decode_header


class Subscriber:
    """SUB socket + decoding. ``newest_only`` keeps one queued frame and drains to the newest."""

    def __init__(self, address: str, topic: str = DEFAULT_TOPIC, newest_only: bool = False,
                 ctx: zmq.Context | None = None) -> None:
        self.address, self.topic, self.newest_only = address, topic, newest_only
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.socket = self.ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if newest_only:
            self.socket.setsockopt(zmq.RCVHWM, 1)
        try:
            connect(self.socket, address, "subscriber")
        except S2IError:
            if self._own_ctx:
                self.ctx.term()
            raise
        self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.info: dict[str, Any] | None = None      # the server's hello, once seen
        self.received = 0
        self.skipped = 0                              # frames drained by newest_only

    def _recv(self, timeout_s: float | None) -> list[bytes] | None:
        timeout_ms = -1 if timeout_s is None else int(timeout_s * 1000)
        if not self.socket.poll(timeout_ms, zmq.POLLIN):
            return None
        return self.socket.recv_multipart()

    def _is_hello(self, parts: list[bytes]) -> bool:
        header = decode_header(parts)
        if header.get("kind") == "hello":
            self.info = header
            return True
        return False

    def wait_ready(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait for the server's hello (sent when our subscription reaches it).

        Frames that arrive first are kept for ``receive``; returns the hello's info.
        """
        deadline = time.monotonic() + timeout_s
        while self.info is None:
            left = deadline - time.monotonic()
            parts = self._recv(max(0.0, left)) if left > 0 else None
            if parts is None:
                raise S2IError(f"no S2I server answered on {self.address} within {timeout_s:g} s "
                               "(is s2i-stream/s2i-serve running with that --pub address?)")
            if not self._is_hello(parts):
                self._pending = parts
                break
        return self.info or {}

    _pending: list[bytes] | None = None

    def receive(self, timeout_s: float | None = None) -> Frame | None:
        """The next frame (or, with ``newest_only``, the newest queued); None on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._pending is not None:
                parts, self._pending = self._pending, None
            else:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                parts = self._recv(left)
                if parts is None:
                    return None
            if self._is_hello(parts):
                continue
            if self.newest_only:
                while True:
                    try:
                        newer = self.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if not self._is_hello(newer):
                        parts = newer
                        self.skipped += 1
            self.received += 1
            return decode_frame(parts)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.receive()
            if frame is not None:
                yield frame

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
