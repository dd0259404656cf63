"""The one user-facing error type and the CLI wrapper that prints it as one line."""

from __future__ import annotations

import sys
from collections.abc import Callable


class S2IError(Exception):
    """An error a user can act on; ``str()`` is one line naming the thing and what was expected."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class Terminated(KeyboardInterrupt):
    """SIGTERM as an exception (``runtime.cli.raise_on_signals``): it unwinds like Ctrl-C, so
    ``finally`` blocks and ``runtime.model.manifest.atomic_dir`` remove what was half written."""


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), or its type
    name when the message is empty; ``with_type`` prefixes ``"TypeName: "``."""
    lines = str(exc).strip().splitlines()
    name = type(exc).__name__
    if not lines:
        return name
    return f"{name}: {lines[0]}" if with_type else lines[0]


def run_cli(main: Callable[[], int | None]) -> int:
    """Run a CLI body: ``S2IError`` -> ``error: ...`` on stderr (exit 2), Ctrl-C -> exit 130,
    ``Terminated`` (SIGTERM under ``runtime.cli.raise_on_signals``) -> exit 143."""
    try:
        return int(main() or 0)
    except S2IError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print("terminated" if terminated else "interrupted", file=sys.stderr)
        return 143 if terminated else 130
