"""Pieces every console script shares: the log line, and SIGINT/SIGTERM as a stop event."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any


def log(message: str) -> None:
    print(f"[s2i] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM (so loops end cleanly); ``event.signal`` says which."""
    stop = threading.Event()
    stop.signal = None  # type: ignore[attr-defined]

    def handler(signum: int, _frame: Any) -> None:
        stop.signal = signum  # type: ignore[attr-defined]
        stop.set()

    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def exit_code(stop: threading.Event) -> int:
    signum = getattr(stop, "signal", None)
    if signum == signal.SIGINT:
        log("interrupted; shut down cleanly")
        return 130
    if signum == signal.SIGTERM:
        log("terminated; shut down cleanly")
    return 0
