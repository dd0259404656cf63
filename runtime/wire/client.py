"""A Python subscriber for S2I image streams (protocol in docs/PROTOCOL.md).

    from runtime.wire.client import Subscriber
    with Subscriber("tcp://127.0.0.1:5556", newest_only=True) as sub:
        sub.wait_ready()                      # handshake: our subscription is live
        for frame in sub:                     # frame.header (dict), frame.images ([H,W,3] uint8)
            print(frame.seq, frame.header["timings_ms"])

With CURVE: ``Subscriber(address, keys=ClientKeys("keys/me.key_secret", "keys/server.key"))``;
``retry=True`` keeps retrying a refused handshake (with backoff) instead of raising.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import zmq

from runtime.cli import RateLimitedLog, log
from runtime.errors import S2IError
from runtime.wire.protocol import DEFAULT_TOPIC, Frame, connect, decode_frame, decode_header
from runtime.wire.security import ClientKeys, HandshakeWatch

DRAIN_TIMEOUT_S = 0.02    # newest_only: drain until no message came for this long
DRAIN_LIMIT_S = 0.5       # ... but never longer than this in all (a fast stream never pauses)
RETRY_FIRST_S, RETRY_MAX_S = 0.5, 10.0   # refused handshake: retry after 0.5 s, doubling to 10
MAX_ENDED = 256           # end messages kept in ``Subscriber.ended`` (the oldest go first)


class Backoff:
    """Retry delays: ``first_s``, doubling up to ``max_s``; ``reset`` after a success."""

    def __init__(self, first_s: float = RETRY_FIRST_S, max_s: float = RETRY_MAX_S) -> None:
        self.first_s, self.max_s = first_s, max_s
        self.next_s = first_s

    def take(self) -> float:
        delay, self.next_s = self.next_s, min(self.max_s, self.next_s * 2)
        return delay

    def reset(self) -> None:
        self.next_s = self.first_s


class ClientSocket:
    """A connecting socket (SUB, PUSH) that recovers from a refused handshake.

    libzmq does not reconnect after a refused handshake (ZAP status 400, a mechanism
    mismatch): the socket stays connected to nothing. Call ``check()`` at least once a second;
    it reads the socket monitor (``HandshakeWatch``) and, on a failed handshake, raises the
    failure as one ``S2IError`` line or, with ``retry``, logs that line and re-creates the
    socket after a backoff delay (``RETRY_FIRST_S`` doubling to ``RETRY_MAX_S``, back to the
    first after a success). ``setup`` sets the socket's options (called for every socket).
    """

    def __init__(self, ctx: zmq.Context, kind: int, address: str, what: str,
                 keys: ClientKeys | None, setup: Callable[[zmq.Socket], None],
                 retry: bool = False) -> None:
        self.ctx, self.kind, self.address, self.what = ctx, kind, address, what
        self.keys, self.setup, self.retry = keys, setup, retry
        self.backoff = Backoff()
        self.retries = 0
        self._retry_at: float | None = None
        self._failed = False
        self._log = RateLimitedLog()
        self.socket, self.watch = self._open()

    def _open(self) -> tuple[zmq.Socket, HandshakeWatch]:
        try:
            socket = self.ctx.socket(self.kind)
        except zmq.ZMQError as exc:
            raise S2IError(f"cannot create the {self.what} socket: {exc}") from exc
        watch = None
        try:
            socket.setsockopt(zmq.LINGER, 0)
            self.setup(socket)
            if self.keys is not None:
                self.keys.apply(socket)
            watch = HandshakeWatch(socket, self.address, curve=self.keys is not None)
            connect(socket, self.address, self.what)
        except BaseException as exc:
            if watch is not None:
                watch.close()
            socket.close(linger=0)
            if isinstance(exc, zmq.ZMQError):
                raise S2IError(f"cannot set up the {self.what} socket: {exc}") from exc
            raise
        return socket, watch

    def check(self) -> bool:
        """Act on handshake events; True when ``socket`` is a new socket (re-created)."""
        if self._retry_at is not None:
            if time.monotonic() < self._retry_at:
                return False
            self._retry_at = None
            old = self.socket, self.watch
            self.socket, self.watch = self._open()
            old[1].close()
            old[0].close(linger=0)
            self.retries += 1
            return True
        failure = self.watch.poll()
        if failure is None:
            if self._failed and self.watch.succeeded:
                self._failed = False
                self.backoff.reset()
                log(f"handshake with {self.address} succeeded after {self.retries} "
                    f"retr{'y' if self.retries == 1 else 'ies'}")
            return False
        if not self.retry:
            raise S2IError(failure)
        delay = self.backoff.take()
        self._failed = True
        self._retry_at = time.monotonic() + delay
        self._log(failure, f"{failure}; retrying in {delay:g} s")
        return False

    @property
    def recovering(self) -> bool:
        """Whether a handshake failed and none has succeeded since."""
        return self._failed

    def close(self, linger_ms: int = 0) -> None:
        self.watch.close()
        self.socket.close(linger=linger_ms)


class Subscriber:
    """SUB socket + decoding.

    ``newest_only`` keeps one queued message and, after each receive, drains what arrives
    within ``DRAIN_TIMEOUT_S`` of the previous message, returning the newest frame: messages a
    server queued for a slow client reach the socket one by one, so a non-blocking drain alone
    stops at the first gap and returns a stale frame. Hellos and end messages are not frames:
    the latest hello is ``info``, ends are collected in ``ended`` (stream id -> header).
    A malformed message (any header or payload ``decode_frame`` refuses) is counted in
    ``bad``, logged (rate-limited) and skipped. A refused handshake raises one ``S2IError``
    line, or with ``retry`` is logged and retried with backoff (``ClientSocket``).
    """

    def __init__(self, address: str, topic: str = DEFAULT_TOPIC, newest_only: bool = False,
                 ctx: zmq.Context | None = None, keys: ClientKeys | None = None,
                 retry: bool = False) -> None:
        self.address, self.topic, self.newest_only = address, topic, newest_only
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()

        def setup(socket: zmq.Socket) -> None:
            if newest_only:
                socket.setsockopt(zmq.RCVHWM, 1)
            socket.setsockopt(zmq.SUBSCRIBE, topic.encode())

        try:
            self.conn = ClientSocket(self.ctx, zmq.SUB, address, "subscriber", keys, setup,
                                     retry)
        except BaseException:
            if self._own_ctx:
                self.ctx.term()
            raise
        self.info: dict[str, Any] | None = None      # the server's latest hello
        self.ended: dict[str, dict[str, Any]] = {}    # stream id -> its end message
        self.received = 0
        self.skipped = 0                              # frames drained by newest_only
        self.bad = 0                                  # malformed messages skipped
        self._bad_log = RateLimitedLog()
        self._pending: list[bytes] | None = None

    @property
    def socket(self) -> zmq.Socket:
        return self.conn.socket

    def _recv(self, timeout_s: float | None) -> list[bytes] | None:
        """One message, or None on timeout; checks the handshake at least once a second."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = 1.0 if deadline is None else min(1.0, max(0.0, deadline - time.monotonic()))
            if self.socket.poll(int(left * 1000), zmq.POLLIN):
                parts = self.socket.recv_multipart()
                if self.conn.recovering:
                    self.conn.check()         # logs that the retried handshake succeeded
                return parts
            self.conn.check()
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def _skip(self, exc: S2IError) -> None:
        self.bad += 1
        self._bad_log("bad", f"skipping a bad message from {self.address}: {exc}")

    def _is_frame(self, parts: list[bytes]) -> bool:
        """Record a hello or end message; True if ``parts`` is a frame (a bad header, an
        unknown kind: False, skipped)."""
        try:
            header = decode_header(parts)
            kind = header.get("kind")
            if kind == "end" and not isinstance(header.get("stream"), str):
                raise S2IError("S2I end message: header 'stream' should be a string")
        except S2IError as exc:
            self._skip(exc)
            return False
        if kind == "hello":
            self.info = header
        elif kind == "end":
            self.ended.pop(header["stream"], None)
            self.ended[header["stream"]] = header
            while len(self.ended) > MAX_ENDED:
                self.ended.pop(next(iter(self.ended)))
        return kind == "frame"       # unknown kinds are skipped (forward compatibility)

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
                raise S2IError(f"{self.conn.watch.timeout_reason()} within {timeout_s:g} s (is "
                               "s2i-stream/s2i-serve running with that --pub address?)")
            if self._is_frame(parts):
                self._pending = parts
                break
        return self.info or {}

    def _drain(self, parts: list[bytes]) -> list[bytes]:
        """The newest frame among ``parts`` and what arrives right after it."""
        limit = time.monotonic() + DRAIN_LIMIT_S
        while time.monotonic() < limit and self.socket.poll(int(DRAIN_TIMEOUT_S * 1000)):
            newer = self.socket.recv_multipart()
            if self._is_frame(newer):
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
            if not self._is_frame(parts):
                continue
            if self.newest_only:
                parts = self._drain(parts)
            try:
                frame = decode_frame(parts)
            except S2IError as exc:
                self._skip(exc)
                continue
            self.received += 1
            return frame

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.receive()
            if frame is not None:
                yield frame

    def close(self) -> None:
        self.conn.close()
        if self._own_ctx:
            self.ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
