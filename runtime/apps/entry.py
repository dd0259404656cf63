"""Console-script entry points (``[project.scripts]`` in pyproject.toml).

Importing a command's module takes a moment (NumPy, ZeroMQ, ONNX Runtime): Ctrl-C meanwhile
would print a ``KeyboardInterrupt`` traceback before ``runtime.errors.run_cli`` is in place.
Each entry point imports its module itself, so an early Ctrl-C is ``interrupted`` (exit 130)
like a later one. This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
import sys


def _run(module: str) -> int:
    try:
        return int(importlib.import_module(module).main() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def serve() -> int:
    return _run("runtime.apps.serve")


def stream() -> int:
    return _run("runtime.apps.stream")


def capture() -> int:
    return _run("runtime.apps.capture")


def view() -> int:
    return _run("runtime.apps.view")


def keys() -> int:
    return _run("runtime.apps.keys")


def web() -> int:
    return _run("runtime.web.app")
