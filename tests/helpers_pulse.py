"""A private PulseAudio server with a null sink: a real capture path without a microphone.

Test-only. ``with null_sink_server(workdir) as pulse:`` starts ``pulseaudio``
(in the foreground, as a child we own) with its own runtime folder, a ``module-null-sink``
and that sink's ``.monitor`` as the default source. Give ``pulse.env`` to child processes:
their PyAudio (PortAudio -> ALSA -> the pulse plugin) then records whatever
``pulse.play(wav)`` plays into the sink. Raises ``S2IError`` when PulseAudio cannot start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import S2IError

SINK = "s2i_null"


@dataclass
class PulseServer:
    env: dict[str, str]
    sink: str
    process: subprocess.Popen

    def pactl(self, *args: str) -> str:
        result = _pactl(list(args), self.env)
        if result.returncode != 0:
            raise S2IError(f"pactl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def play(self, wav: str | Path) -> subprocess.Popen:
        """Start playing a file into the null sink (what the monitor source records)."""
        return subprocess.Popen(["paplay", f"--device={self.sink}", str(wav)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _pactl(args: list[str], env: dict[str, str], timeout_s: float = 10.0
           ) -> subprocess.CompletedProcess:
    """Run ``pactl``; a hung call becomes an S2IError, not a TimeoutExpired traceback."""
    try:
        return subprocess.run(["pactl", *args], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise S2IError(f"pactl {' '.join(args)} did not answer within {timeout_s:g} s "
                       "(is the private pulseaudio server hung?)") from exc


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return " | ".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def null_sink_server(workdir: str | Path, start_timeout_s: float = 10.0) -> Iterator[PulseServer]:
    missing = [t for t in ("pulseaudio", "pactl", "paplay") if shutil.which(t) is None]
    if missing:
        raise S2IError(f"PulseAudio tools missing: {', '.join(missing)} "
                       "(apt-get install pulseaudio pulseaudio-utils libasound2-plugins)")
    workdir = Path(workdir)
    runtime_dir, home = workdir / "pulse-runtime", workdir / "pulse-home"
    runtime_dir.mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(runtime_dir, 0o700)
    socket = runtime_dir / "pulse" / "native"
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime_dir), HOME=str(home),
               PULSE_RUNTIME_PATH=str(runtime_dir / "pulse"), PULSE_SERVER=f"unix:{socket}")
    env.pop("PULSE_SINK", None)
    env.pop("PULSE_SOURCE", None)
    log_path = workdir / "pulseaudio.log"     # a file, not a PIPE nobody drains
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            ["pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--system=false",
             "--disable-shm", "--load=module-native-protocol-unix",
             f"--load=module-null-sink sink_name={SINK} rate=48000 channels=2",
             "--log-target=stderr", "--log-level=error"],
            env=env, stdout=subprocess.DEVNULL, stderr=log_file)
    server = PulseServer(env, SINK, process)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise S2IError(f"pulseaudio exited at start: {_log_tail(log_path)} "
                               f"(log: {log_path})")
            ready = _pactl(["info"], env)
            if ready.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise S2IError(f"pulseaudio did not answer within {start_timeout_s:g} s "
                               f"(log: {log_path})")
            time.sleep(0.05)   # polling a starting daemon; it offers no readiness signal
        server.pactl("set-default-sink", SINK)
        server.pactl("set-default-source", f"{SINK}.monitor")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
