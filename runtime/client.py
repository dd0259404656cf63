"""A Python subscriber for S2I image streams (protocol in docs/PROTOCOL.md).

    from runtime.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5556", newest_only=True) as sub:
        sub.wait_ready()                      # handshake: our subscription is live
        for frame in sub:                     # frame.header (dict), frame.images ([H,W,3] uint8)
            print(frame.seq, frame.header["timings_ms"])

With CURVE: ``Subscriber(address, keys=ClientKeys("keys/me.key_secret", "keys/server.key"))``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import zmq

from runtime.errors import S2IError
from runtime.protocol import DEFAULT_TOPIC, Frame, connect, decode_frame, decode_header
from runtime.security import ClientKeys, HandshakeWatch

DRAIN_TIMEOUT_S = 0.02    # newest_only: drain until no message came for this long
DRAIN_LIMIT_S = 0.5       # ... but never longer than this in all (a fast stream never pauses)


class Subscriber:
    """SUB socket + decoding.

    ``newest_only`` keeps one queued message and, after each receive, drains what arrives
    within ``DRAIN_TIMEOUT_S`` of the previous message, returning the newest frame: messages a
    server queued for a slow client reach the socket one by one, so a non-blocking drain alone
    stops at the first gap and returns a stale frame. Hellos and end messages are not frames:
    the latest hello is ``info``, ends are collected in ``ended`` (stream id -> header).
    """

    def __init__(self, address: str, topic: str = DEFAULT_TOPIC, newest_only: bool = False,
                 ctx: zmq.Context | None = None, keys: ClientKeys | None = None) -> None:
        self.address, self.topic, self.newest_only = address, topic, newest_only
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.socket = self.ctx.socket(zmq.SUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        if newest_only:
            self.socket.setsockopt(zmq.RCVHWM, 1)
        self.watch: HandshakeWatch | None = None
        try:
            if keys is not None:
                keys.apply(self.socket)
            self.watch = HandshakeWatch(self.socket, address, curve=keys is not None)
            connect(self.socket, address, "subscriber")
        except BaseException:
            if self.watch is not None:
                self.watch.close()
            self.socket.close(linger=0)
            if self._own_ctx:
                self.ctx.term()
            raise
        self.socket.setsockopt(zmq.SUBSCRIBE, topic.encode())
        self.info: dict[str, Any] | None = None      # the server's latest hello
        self.ended: dict[str, dict[str, Any]] = {}    # stream id -> its end message
        self.received = 0
        self.skipped = 0                              # frames drained by newest_only
        self._pending: list[bytes] | None = None

    def _check_handshake(self) -> None:
        failure = self.watch.poll() if self.watch is not None else None
        if failure:
            raise S2IError(failure)

    def _recv(self, timeout_s: float | None) -> list[bytes] | None:
        """One message, or None on timeout; checks the handshake at least once a second."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            if self.socket.poll(int(left * 1000), zmq.POLLIN):
                return self.socket.recv_multipart()
            self._check_handshake()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _is_control(self, parts: list[bytes]) -> bool:
        """Record a hello or end message; True if ``parts`` is not a frame."""
        header = decode_header(parts)
        kind = header.get("kind")
        if kind == "hello":
            self.info = header
            return True
        if kind == "end":
            self.ended[str(header.get("stream"))] = header
            return True
        return kind != "frame"       # unknown kinds are skipped (forward compatibility)

    def wait_ready(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """Wait for the server's hello (sent when our subscription reaches it).

        Frames that arrive first are kept for ``receive``; returns the hello's info. A failed
        handshake (CURVE against plaintext, a refused key) is a one-line ``S2IError`` at once.
        """
        deadline = time.monotonic() + timeout_s
        while self.info is None:
            left = deadline - time.monotonic()
            parts = self._recv(min(0.1, left)) if left > 0 else None
            if parts is None:
                if left > 0:
                    continue
                assert self.watch is not None
                raise S2IError(f"{self.watch.timeout_reason()} within {timeout_s:g} s (is "
                               "s2i-stream/s2i-serve running with that --pub address?)")
            if not self._is_control(parts):
                self._pending = parts
                break
        return self.info or {}

    def _drain(self, parts: list[bytes]) -> list[bytes]:
        """The newest frame among ``parts`` and what arrives right after it."""
        limit = time.monotonic() + DRAIN_LIMIT_S
        while time.monotonic() < limit and self.socket.poll(int(DRAIN_TIMEOUT_S * 1000)):
            newer = self.socket.recv_multipart()
            if not self._is_control(newer):
                parts = newer
                self.skipped += 1
        return parts

    def receive(self, timeout_s: float | None = None) -> Frame | None:
        """The next frame (or, with ``newest_only``, the newest); None on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            if self._pending is not None:
                parts, self._pending = self._pending, None
            else:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                parts = self._recv(left)
                if parts is None:
                    return None
            if self._is_control(parts):
                continue
            if self.newest_only:
                parts = self._drain(parts)
            self.received += 1
            return decode_frame(parts)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.receive()
            if frame is not None:
                yield frame

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        self.socket.close(linger=0)
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
