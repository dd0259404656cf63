"""One writer per run folder: a second training process on a run is refused (one line naming
the folder and the holder's pid); a crashed holder leaves nothing that blocks."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.config import save_config
from runtime.errors import S2IError
from trainer.run_lock import RunLock, lock_run
from trainer.train.gan import GanConfig

HOLD = ("import sys; from trainer.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); sys.stdin.read()")


def hold(run: Path) -> subprocess.Popen[str]:
    """Another process holding the run's lock until its stdin closes."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_second_process_is_refused_naming_folder_and_pid(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = hold(run)
    try:
        with pytest.raises(S2IError, match=rf"run folder {run} is in use by another training "
                                           rf"process \(pid {holder.pid} on ") as info:
            RunLock(run).acquire()
        assert "\n" not in str(info.value)
    finally:
        holder.communicate("")          # the holder ends: its lock goes with it
    with RunLock(run) as lock:
        assert lock.held


def test_a_killed_holder_blocks_nothing(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".lock").is_file()   # stale file, no lock
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_reentrant_within_one_process(tmp_path: Path) -> None:
    with RunLock(tmp_path), lock_run(tmp_path):     # the demo holds it while a stage runs
        with lock_run(tmp_path, writer=False):      # other ranks take none
            pass
        probe = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], input="",
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0 and "is in use" in probe.stderr
    probe = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], input="",
                           capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr


def test_second_resume_on_a_run_is_one_line_error(tmp_path: Path) -> None:
    """The issue: six `--resume` processes ran on one run folder with no warning."""
    run = tmp_path / "run"
    save_config(GanConfig(store=str(tmp_path / "store"), encoder=str(tmp_path / "audio"),
                          run_dir=str(run)), run / "config_gan.json")
    holder = hold(run)                  # stands for the first `--resume`, mid-training
    try:
        second = subprocess.run([sys.executable, "-m", "trainer", "gan", "--resume",
                                 "--run-dir", str(run)], capture_output=True, text=True,
                                timeout=120)
    finally:
        holder.communicate("")
    lines = second.stderr.strip().splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert lines[0].startswith(f"error: run folder {run} is in use by another training "
                               f"process (pid {holder.pid} on ")
