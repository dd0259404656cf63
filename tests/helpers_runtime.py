"""Helpers for the runtime tests: CLI subprocesses whose stderr can be awaited line by line,
a tiny export shared by the runtime test files of one pytest session, and test audio."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

BIN = Path(sys.executable).parent
SCRIPTS = {"s2i-stream": "runtime.apps.stream", "s2i-serve": "runtime.apps.serve",
           "s2i-capture": "runtime.apps.capture", "s2i-view": "runtime.apps.view",
           "s2i-keys": "runtime.apps.keys"}


def tiny_export(tmp_path_factory) -> Path:
    """One tiny input-sensitive export (width 0.125, D=64) per session, shared by the runtime,
    serve, cluster and backend test files (its images change with the audio, so a data-flow
    mix-up cannot pass unseen)."""
    from helpers_export import shared_export

    return shared_export(tmp_path_factory, embedding_dim=64, input_sensitive=True)


sensitive_export = tiny_export          # the same export under its other name


def write_tone_wav(path: Path, seconds: float, rate: int = 44100, channels: int = 2,
                   freq: float = 660.0, amplitude: float = 0.5) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    mono = amplitude * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) / 1.5
    sf.write(path, np.repeat(mono[:, None], channels, axis=1).astype(np.float32), rate,
             subtype="PCM_16")
    return path


class CLI:
    """A console script (``s2i-stream`` ...) run as a subprocess; stderr read by a thread."""

    def __init__(self, script: str, *args: str, env: dict[str, str] | None = None,
                 stdin: int | None = None, code: str | None = None) -> None:
        """``code``: run ``python -c code *args`` instead (a script with test doubles)."""
        exe = BIN / script
        module = SCRIPTS[script]
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", module]
        if code is not None:
            command = [sys.executable, "-c", code]
        self.env = dict(env or os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(command + list(args), env=self.env, stdin=stdin,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first stderr line matching ``pattern`` (fails with all stderr so far)."""
        regex = re.compile(pattern)
        for line in self.lines:
            if match := regex.search(line):
                return match
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := regex.search(line):
                return match
        raise AssertionError(f"no stderr line matching {pattern!r}; stderr:\n" + self.stderr())

    def stderr(self) -> str:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"process did not exit in {timeout} s; stderr:\n"
                                 + self.stderr()) from None
        self._reader.join(5)      # all of stderr is in the queue now
        return code

    def signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def run_cli(script: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess:
    exe = BIN / script
    module = SCRIPTS[script]
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", module]
    return subprocess.run(command + list(args), env=env, capture_output=True, text=True,
                          timeout=timeout)
