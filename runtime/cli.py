"""Pieces every console script shares: the log line (plain and rate-limited), and
SIGINT/SIGTERM as a stop event."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

PREFIX = "[s2i]"   # a worker process of s2i-serve --workers says which it is


def log(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


class RateLimitedLog:
    """``log`` for lines that can repeat (one per bad message, per refused stream...).

    Each ``key`` is logged at once the first time, then at most once per ``every_s``; the
    next line that gets through says how many were held back. At most ``max_keys`` keys are
    remembered (the oldest forgotten first), so hostile input cannot grow it.
    """

    def __init__(self, every_s: float = 10.0, max_keys: int = 256,
                 sink: Callable[[str], None] = log,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.max_keys, self.sink, self.clock = every_s, max_keys, sink, clock
        self._keys: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (last, held)
        self._lock = threading.Lock()

    def __call__(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged less than ``every_s`` ago; True if
        logged."""
        now = self.clock()
        with self._lock:
            last, held = self._keys.get(key, (None, 0))
            if last is not None and now - last < self.every_s:
                self._keys[key] = (last, held + 1)
                return False
            self._keys[key] = (now, 0)
            self._keys.move_to_end(key)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        more = f" ({held} more like this in the last {now - last:.0f} s)" if held else ""
        self.sink(message + more)
        return True


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """An event set by SIGINT/SIGTERM (so loops end cleanly); ``event.signal`` says which."""
    stop = threading.Event()
    stop.signal = None  # type: ignore[attr-defined]

    def handler(signum: int, _frame: Any) -> None:
        # A second signal can arrive while the first handler is inside stop.set() (holding
        # the event's lock): setting it again would deadlock, and once is enough.
        if stop.signal is not None:  # type: ignore[attr-defined]
            return
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


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """For a command that works in one go (``python -m export``): SIGINT raises
    ``KeyboardInterrupt`` and SIGTERM ``runtime.errors.Terminated`` in the main thread, so the
    stack unwinds (``runtime.model.manifest.atomic_dir`` removes its ``.partial`` folder) and
    ``runtime.errors.run_cli`` prints one line. The first signal makes both ignored from then
    on, so that clean-up is not itself interrupted; without one the old handlers come back."""
    from runtime.errors import Terminated

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        if not received:
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


def run_command(prog: str, commands: dict[str, tuple[str, str]], argv: list[str] | None,
                default: str | None = None, noun: str = "command") -> int:
    """``prog COMMAND [options]``: import the module of ``commands[COMMAND]`` (``name ->
    (module, one-line description)``) only when it is asked for, and run its
    ``main(argv)`` under :func:`runtime.errors.run_cli`. With no command: ``default``, or
    the usage (exit 2)."""
    import importlib

    from runtime.errors import run_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(len(name) for name in commands) + 2
    usage = "\n".join([f"usage: {prog} {'[COMMAND]' if default else 'COMMAND'} [options]", "",
                       "commands:",
                       *[f"  {name:<{width}} {text}" for name, (_, text) in commands.items()],
                       "", (f"With no command, runs `{default}`. " if default else "")
                       + f"`{prog} COMMAND --help` for options."])
    if argv and argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    if argv and not argv[0].startswith("-"):
        command = argv.pop(0)
    elif default is not None:
        command = default
    else:
        print(usage)
        return 2
    if command not in commands:
        print(f"error: unknown {noun} '{command}'; expected one of {', '.join(commands)}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(commands[command][0])
    return run_cli(lambda: module.main(argv))
