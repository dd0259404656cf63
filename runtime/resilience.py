"""What keeps a server serving when something goes wrong, and says so.

- ``guarded``: a serving thread's body. An unexpected exception per message or batch is
  counted, logged rate-limited and survived by the thread itself (``survived``); one that
  escapes the thread's loop means the thread cannot go on: it is kept as one ``S2IError``
  line and ``stop`` is set, so the process exits non-zero with that line instead of staying
  up as a zombie that serves nothing.
- ``SocketMonitor``: a socket's monitor events, read without blocking (the one loop of
  ``ConnectionWatch`` and of the client's ``runtime.wire.security.HandshakeWatch``).
- ``ConnectionWatch``: socket monitor events of a bound socket (connections dropped by
  libzmq, e.g. for a part over ``ZMQ_MAXMSGSIZE``; accepts failing when file descriptors run
  out; failed CURVE handshakes) as rate-limited log lines.
- ``raise_open_file_limit``: the soft ``RLIMIT_NOFILE`` up to the hard limit (every
  connection is a file descriptor).
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
from collections.abc import Callable, Iterator

import zmq
from zmq.utils.monitor import parse_monitor_message

from runtime.cli import RateLimitedLog
from runtime.errors import S2IError, first_line

try:
    import resource
except ImportError:     # not on Windows
    resource = None  # type: ignore[assignment]


def guarded(name: str, target: Callable[[], None], errors: list[BaseException],
            stop: threading.Event) -> Callable[[], None]:
    """``target`` as a thread body: an exception that escapes it is recorded in ``errors`` as
    one line (``the NAME thread stopped: ...``) and sets ``stop``."""
    def body() -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc if isinstance(exc, S2IError) else S2IError(
                f"the {name} thread stopped after an unexpected error and the server cannot "
                f"go on: {first_line(exc, with_type=True)}"))
            stop.set()
    return body


def survived(say: RateLimitedLog, where: str, exc: BaseException, count: int,
             lost: str) -> None:
    """Log (rate-limited) an unexpected exception that cost only ``lost``."""
    say(f"unexpected:{where}:{type(exc).__name__}",
        f"unexpected error in {where}; {lost} dropped, serving goes on ({count} such errors "
        f"so far): {first_line(exc, with_type=True)}")


def open_file_limit() -> int | None:
    if resource is None:
        return None
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_open_file_limit() -> int | None:
    """Raise the soft open-file limit to the hard one; returns the soft limit now in force."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


_MONITOR_IDS = itertools.count()


class SocketMonitor:
    """The monitor socket of ``socket`` for ``events``; ``pending()`` from the thread that owns
    the socket. Create it in that thread and ``close()`` it before the socket (a context does
    not terminate while a monitor socket is open)."""

    def __init__(self, socket: zmq.Socket, events: int) -> None:
        # A fresh address each time: pyzmq's default names it by the socket's FD, which a
        # re-created socket can reuse while the old monitor's endpoint is still bound.
        self.monitor = socket.get_monitor_socket(
            events, addr=f"inproc://s2i-monitor-{next(_MONITOR_IDS)}")

    def pending(self) -> Iterator[tuple[int, int]]:
        """The events waiting now, as (event, value); a malformed one is passed over."""
        while self.monitor.poll(0, zmq.POLLIN):
            try:
                event = parse_monitor_message(self.monitor.recv_multipart())
            except (ValueError, KeyError, IndexError, zmq.ZMQError):
                continue
            yield int(event["event"]), int(event["value"])

    def close(self) -> None:
        self.monitor.close(linger=0)


class ConnectionWatch(SocketMonitor):
    """Monitor events of a bound socket, as rate-limited log lines; ``poll()`` from the thread
    that owns the socket."""

    EVENTS = (zmq.EVENT_DISCONNECTED | zmq.EVENT_ACCEPT_FAILED
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_AUTH)

    def __init__(self, socket: zmq.Socket, what: str, say: RateLimitedLog,
                 max_part_bytes: int | None = None, disconnects: bool = True) -> None:
        """Create it in the thread that owns ``socket`` and ``close()`` it before the socket
        (a context does not terminate while the monitor socket is open). ``disconnects``:
        also log closed connections (for a PULL of capture nodes, not for a PUB)."""
        self.what, self.say, self.max_part_bytes = what, say, max_part_bytes
        super().__init__(socket, self.EVENTS if disconnects
                         else self.EVENTS & ~zmq.EVENT_DISCONNECTED)
        self.disconnects = self.accept_failures = self.handshake_failures = 0

    def poll(self) -> int:
        """Read and log pending events; returns how many."""
        count = 0
        for kind, value in self.pending():
            count += 1
            self._log(kind, value)
        return count

    def _log(self, kind: int, value: int) -> None:
        if kind == zmq.EVENT_DISCONNECTED:
            self.disconnects += 1
            why = "its peer closed it" if self.max_part_bytes is None else (
                f"its peer stopped, or it sent a message part over {self.max_part_bytes} "
                "bytes (ZMQ_MAXMSGSIZE), which drops that whole connection")
            self.say(f"disconnected:{self.what}",
                     f"a connection to the {self.what} socket closed ({self.disconnects} so "
                     f"far): {why}")
        elif kind == zmq.EVENT_ACCEPT_FAILED:
            self.accept_failures += 1
            reason = os.strerror(value) if value > 0 else "unknown error"
            hint = ""
            if value in (errno.EMFILE, errno.ENFILE):
                hint = (f" (open-file limit {open_file_limit()}): new connections wait until "
                        "others close; raise `ulimit -n` or use CURVE to keep strangers out")
            self.say(f"accept:{self.what}",
                     f"cannot accept a connection on the {self.what} socket "
                     f"({self.accept_failures} so far): {reason}{hint}")
        else:
            self.handshake_failures += 1
            self.say(f"handshake:{self.what}",
                     f"a handshake on the {self.what} socket failed ({self.handshake_failures}"
                     " so far): a client without CURVE, with a key not allowed, or with a "
                     "wrong server key")
