"""The local pages' HTTP server (the live viewer, the browser translator): bounded per request.

A new connection waits in ``RequestGate`` (one thread, no handler slot) until its whole request
line and headers have come, within ``HEADER_DEADLINE_S`` in all; only then does it take one of
the ``MAX_CONNECTIONS`` handler slots. Slow or idle connections (slowloris) are closed at the
deadline and never hold a slot that honest requests need.
"""

from __future__ import annotations

import io
import queue
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from runtime.cli import RateLimitedLog
from runtime.errors import first_line

MAX_CONNECTIONS = 32      # whole requests served at once; more are closed at once
IDLE_TIMEOUT_S = 10.0     # a handler's socket timeout (its response must go out within it)
HEADER_DEADLINE_S = 5.0   # a request's line and headers must all arrive within this
MAX_HEADER_BYTES = 16384  # request line + headers; longer ones are answered 431 and closed
MAX_PENDING = 128         # connections still sending headers; past this the oldest is closed


class _Replay(io.RawIOBase):
    """A connection's reader that first gives back the bytes the gate already read."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self.prefix, self.sock = prefix, sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.prefix:
            n = min(len(buffer), len(self.prefix))
            buffer[:n], self.prefix = self.prefix[:n], self.prefix[n:]
            return n
        return self.sock.recv_into(buffer)


class _GatedSocket:
    """A connection whose request headers the gate read: ``makefile("rb")`` replays them,
    everything else is the socket's."""

    def __init__(self, sock: socket.socket, prefix: bytes) -> None:
        self._sock, self._prefix = sock, prefix

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def makefile(self, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if "r" not in mode:
            return self._sock.makefile(mode, *args, **kwargs)
        return io.BufferedReader(_Replay(self._prefix, self._sock))


class RequestGate:
    """Holds new connections, in one thread with a selector, until their request line and
    headers have arrived, then hands them on with those bytes (``ready``, which must not
    raise: it runs in the gate's thread).

    Each connection has ``deadline_s`` in all for its headers (not per read: a byte every few
    seconds does not keep it open); at most ``max_pending`` wait (past that the oldest is
    closed). So slow or idle connections cost a file descriptor for a few seconds and never a
    handler thread.
    """

    def __init__(self, ready: Callable[[socket.socket, Any, bytes], None],
                 deadline_s: float = HEADER_DEADLINE_S, max_pending: int = MAX_PENDING,
                 max_bytes: int = MAX_HEADER_BYTES) -> None:
        self.ready, self.deadline_s = ready, deadline_s
        self.max_pending, self.max_bytes = max_pending, max_bytes
        self.closed = 0           # connections closed for a late or missing request
        self.errors = 0
        self._log = RateLimitedLog()
        self._new: queue.SimpleQueue[tuple[socket.socket, Any]] = queue.SimpleQueue()
        self._pending: dict[socket.socket, tuple[float, Any, bytearray]] = {}  # oldest first
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="s2i-view-gate", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, address: Any) -> None:
        """Take a new connection (any thread)."""
        self._new.put((sock, address))
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass          # a wake-up is pending already (or the gate is closing)

    def _run(self) -> None:
        while not self._stop:
            try:
                self._step()
            except Exception as exc:      # counted, logged and survived: the page goes on
                self.errors += 1
                self._log("gate", f"web page: unexpected {first_line(exc, with_type=True)}")

    def _step(self) -> None:
        timeout = 1.0
        if self._pending:
            first = next(iter(self._pending.values()))[0]
            timeout = min(timeout, max(0.0, first - time.monotonic()))
        for key, _ in self._selector.select(timeout):
            if key.fileobj is self._wake_r:
                self._drain_wake()
            else:
                self._read(key.fileobj)  # type: ignore[arg-type]
        self._admit()
        now = time.monotonic()
        while self._pending and next(iter(self._pending.values()))[0] <= now:
            self._drop(next(iter(self._pending)))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass              # nothing more to read

    def _admit(self) -> None:
        while not self._new.empty():
            sock, address = self._new.get()
            sock.setblocking(False)
            self._selector.register(sock, selectors.EVENT_READ)
            self._pending[sock] = (time.monotonic() + self.deadline_s, address, bytearray())
            while len(self._pending) > self.max_pending:
                self._drop(next(iter(self._pending)))

    def _forget(self, sock: socket.socket) -> tuple[float, Any, bytearray]:
        self._selector.unregister(sock)
        return self._pending.pop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self._forget(sock)
        self.closed += 1
        sock.close()

    def _read(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        buffer = self._pending[sock][2]
        buffer += data
        if b"\n\r\n" in buffer or b"\n\n" in buffer:
            _, address, _ = self._forget(sock)
            sock.setblocking(True)
            self.ready(sock, address, bytes(buffer))
        elif len(buffer) >= self.max_bytes:
            try:
                sock.send(b"HTTP/1.0 431 Request Header Fields Too Large\r\n"
                          b"Content-Length: 0\r\n\r\n")
            except OSError:
                pass
            self._drop(sock)

    def close(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(5)
        for sock in list(self._pending):
            self._drop(sock)
        while not self._new.empty():
            self._new.get()[0].close()
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


class PageServer(ThreadingHTTPServer):
    """A threading HTTP server whose connections first pass a ``RequestGate``: a connection
    takes one of ``max_connections`` handler threads only with its whole request in hand;
    past that it is closed at once (``refused``)."""

    daemon_threads = True
    request_queue_size = 64   # a burst of connections is accepted (or refused) at once

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler],
                 max_connections: int = MAX_CONNECTIONS,
                 header_deadline_s: float = HEADER_DEADLINE_S) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        self.refused = 0
        self._log = RateLimitedLog()
        super().__init__(address, handler)
        self.gate = RequestGate(self._dispatch, header_deadline_s)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.gate.add(request, client_address)

    def _dispatch(self, request: socket.socket, client_address: Any, head: bytes) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(_GatedSocket(request, head), client_address)
        except Exception as exc:      # no thread to be had: this request only is lost
            self._slots.release()
            self.refused += 1
            self.shutdown_request(request)
            self._log("thread", f"web page: a request was refused: {first_line(exc)}")

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return            # a browser that went away: nothing to report
        super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def server_close(self) -> None:
        self.gate.close()
        super().server_close()
