"""One writer per run folder: an exclusive ``fcntl.flock`` on ``RUN/.lock``, held for the life
of a training process (a second ``--resume`` on the same run is one error line naming the
folder and the holder's pid).

The lock is advisory and belongs to the open file: the kernel drops it when the process ends
however it ends (kill -9 included), so a stale ``.lock`` file never blocks anything; the pid
written into it is only there to name the holder. flock works on local file systems (and on
NFS v4 where the server supports it); on Windows there is no fcntl and no lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path
from types import TracebackType

from runtime.errors import S2IError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
# run folder (resolved) -> [fd, holders]: re-entrant within one process (the demo holds its
# run for its whole life while its stages take the same lock)
_HELD: dict[Path, list[int]] = {}


class RunLock:
    """``with RunLock(run_dir):`` train; a second holder gets ``S2IError`` at ``acquire``."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._key: Path | None = None

    def acquire(self) -> RunLock:
        if self._key is not None or fcntl is None:
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            key = self.run_dir.resolve()
            if key in _HELD:                # this process holds it already
                _HELD[key][1] += 1
                self._key = key
                return self
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise S2IError(f"cannot lock run folder {self.run_dir}: "
                           f"{exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise S2IError(f"run folder {self.run_dir} is in use by another training process "
                           f"(pid {holder}); wait for it to end or use another --run-dir"
                           ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        entry = _HELD[self._key]
        entry[1] -= 1
        if entry[1] == 0:
            os.close(entry[0])      # closing the file drops the lock; the file stays
            del _HELD[self._key]
        self._key = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lock_run(run_dir: str | Path, writer: bool = True) -> contextlib.AbstractContextManager:
    """``with lock_run(cfg.run_dir, world.is_main):`` the process that writes a run (rank 0 of
    a data-parallel one) holds its lock; the other ranks take none."""
    return RunLock(run_dir) if writer else contextlib.nullcontext()
