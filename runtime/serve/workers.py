"""``s2i-serve --workers N``: the host path in N worker processes around ONE model step.

    capture nodes --PULL (public)--> front: route by stream id --ipc--> worker i (N of them:
        ingress, rings, due windows, features) --ipc windows--> model step (this process: one
        batched model call over every worker's windows) --ipc results--> worker i (encode,
        publish) --ipc XSUB--> zmq.proxy --XPUB (public)--> subscribers

The parent ("front") keeps the public sockets (CURVE applies to them only), routes each audio
message by a stable hash of its stream id (``worker_of``: a stream always lands in the same
worker), batches the windows of all workers with the server's batching rules, runs the model,
numbers each stream's frames (``seq``) and sends the uint8 images back to the owning worker.
The workers (``runtime/serve/worker.py``, started as ``python -m runtime.serve.worker``; never
torch) do what costs host CPU per stream. The private sockets are ipc files in a 0700 folder.
A worker that dies is logged and started again (its streams reset their buffers, their seq
goes on); deaths in a row stop the server (exit 2). See docs/RUNTIME.md, "Worker processes".
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from runtime.cli import RateLimitedLog, exit_code, log, stop_on_signals
from runtime.errors import S2IError
from runtime.resilience import ConnectionWatch, guarded
from runtime.serve.batching import Batching
from runtime.serve.engine import (
    COUNTERS_EVERY_S,
    END_LINGER_MS,
    NetworkLoop,
    close_translator,
    exit_after,
    wait_for_subscribers,
)
from runtime.serve.ingress import MAX_DRAIN, POLL_MS, PULL_RCVHWM, DueStreams, next_pass
from runtime.serve.options import ServeConfig
from runtime.serve.pipeline import Batch, Pipeline, Result, Window
from runtime.serve.stages import Stages, StatusLine
from runtime.wire import protocol
from runtime.wire.protocol import (
    MAX_AUDIO_HEADER_BYTES,
    MAX_AUDIO_PAYLOAD_BYTES,
    Publisher,
    audio_header,
    bind,
    pub_hwm,
)
from runtime.wire.security import NODES_DOMAIN, ServerSecurity, warn_if_open

DEATHS_LIMIT = 3          # this many worker deaths within DEATHS_WINDOW_S stop the server
DEATHS_WINDOW_S = 10.0
READY_TIMEOUT_S = 120.0   # a worker's start (imports) on a busy machine
STOP_WAIT_S = 0.8         # the stop (SIGTERM to the workers) -> their exit, then SIGKILL
INTERNAL_HWM = 10000      # messages queued on a private ipc pipe (frames, windows, results)
SEQ_MEMORY_S = 5.0        # a stream's seq is forgotten this long after its idle expiry


def worker_of(stream: str, workers: int) -> int:
    """The worker of a stream id: stable across processes and runs (crc32, not ``hash``)."""
    return zlib.crc32(stream.encode()) % workers


def route(parts: list[bytes], workers: int) -> int:
    """The worker an audio message goes to, reading only its header's ``stream``; worker 0 for
    anything that does not parse (it refuses it with the usual one-line log)."""
    try:
        stream = audio_header(parts).get("stream", "capture")
    except S2IError:
        return 0
    return worker_of(stream, workers) if isinstance(stream, str) else 0


@dataclass
class RemoteWindow(Window):
    """A due window computed by a worker: ``audio`` holds the model's input row (log-mel
    features, or the sanitised audio when the model computes them), with its levels."""

    rms: float = 0.0
    peak: float = 0.0
    features_ms: float = 0.0


def window_message(window: Window, row: np.ndarray, rms: float, peak: float,
                   features_ms: float) -> list[bytes]:
    """Worker -> parent: one due window's model input."""
    header = {"stream": window.stream, "capture_time": window.capture_time,
              "position_s": window.position_s, "due_time": window.due_time,
              "rms": rms, "peak": peak, "features_ms": features_ms}
    return [b"window", json.dumps(header).encode(),
            np.ascontiguousarray(row, np.float32).tobytes()]


def result_message(worker: int, result: Result) -> list[bytes]:
    """Parent -> worker ``worker``: one window's images (uint8) and header, to encode."""
    envelope = {"header": result.header, "shape": list(result.images.shape),
                "uncertainty": None if result.uncertainty is None
                else list(result.uncertainty.shape)}
    unc = b"" if result.uncertainty is None else result.uncertainty.tobytes()
    return [str(worker).encode(), json.dumps(envelope, allow_nan=False).encode(),
            np.ascontiguousarray(result.images).tobytes(), unc]


def decode_result(parts: list[bytes]) -> Result:
    """A result message as the worker gets it (the worker index already taken off)."""
    if len(parts) != 3:
        raise S2IError(f"result message has {len(parts)} parts, expected 3")
    envelope = json.loads(parts[0])
    images = np.frombuffer(parts[1], np.uint8).reshape(envelope["shape"])
    unc = None if envelope["uncertainty"] is None \
        else np.frombuffer(parts[2], np.uint8).reshape(envelope["uncertainty"])
    return Result(dict(envelope["header"]), images, unc)


class WorkerWindows:
    """The windows the workers send, as the model stage's ``WindowSource``: a receiving thread
    keeps each stream's newest pending window (an older one still pending is a skipped hop,
    counted) and ``take`` hands out batches with the server's rules; frames are numbered here
    (``seq``), so a stream's seq goes on when its worker is restarted."""

    def __init__(self, ctx: zmq.Context, address: str, row_shape: tuple[int, ...],
                 idle_expiry_s: float) -> None:
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, INTERNAL_HWM)
        bind(self.pull, address, "worker windows (PULL)")
        self.row_shape, self.row_bytes = row_shape, 4 * int(np.prod(row_shape))
        self.scheduler = DueStreams()
        self.pending: dict[str, RemoteWindow] = {}
        self.seqs: OrderedDict[str, tuple[int, float]] = OrderedDict()   # next seq, last use
        self.forget_s = idle_expiry_s + SEQ_MEMORY_S
        self.skipped = self.bad = 0
        self.ready: set[int] = set()
        self.stats: dict[int, dict[str, Any]] = {}
        self.say = RateLimitedLog()
        self.cpu_s = 0.0

    def run(self, stop: threading.Event) -> None:
        start = time.thread_time()
        try:
            while not stop.is_set():
                if self.pull.poll(POLL_MS, zmq.POLLIN):
                    for _ in range(MAX_DRAIN):
                        try:
                            parts = self.pull.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self.handle(parts)
                self.cpu_s = time.thread_time() - start
        finally:
            self.pull.close(linger=0)

    def handle(self, parts: list[bytes]) -> None:
        try:
            kind = parts[0]
            if kind == b"window":
                self._file(parts)
            elif kind == b"ended":              # the worker published the stream's end
                stream = parts[1].decode()
                with self.scheduler.cond:
                    self.seqs.pop(stream, None)      # seq starts again at 0 (PROTOCOL.md)
                    self.pending.pop(stream, None)
                    self.scheduler.due.pop(stream, None)
            elif kind == b"ready":
                self.ready.add(int(parts[1]))
            elif kind == b"stats":
                stats = json.loads(parts[2])
                if isinstance(stats, dict):
                    self.stats[int(parts[1])] = stats
            else:
                raise S2IError(f"unknown kind {kind[:20]!r}")
        except (S2IError, ValueError, LookupError, TypeError) as exc:
            self.bad += 1
            self.say("bad-window", f"ignoring a bad message from a worker: {exc}")

    def _file(self, parts: list[bytes]) -> None:
        header = json.loads(parts[1])
        if len(parts) != 3 or len(parts[2]) != self.row_bytes:
            raise S2IError(f"window of {len(parts[-1])} bytes, expected {self.row_bytes}")
        row = np.frombuffer(parts[2], np.float32).reshape(self.row_shape)
        stream = str(header["stream"])
        window = RemoteWindow(stream, row, float(header["capture_time"]),
                              header["position_s"], None, float(header["due_time"]),
                              float(header["rms"]), float(header["peak"]),
                              float(header["features_ms"]))
        with self.scheduler.cond:
            if stream in self.pending:
                self.skipped += 1               # the model is slower than the hop
            self.pending[stream] = window
            self.scheduler.mark(stream)

    def take(self, max_batch: int, max_wait_s: float, stop: threading.Event) -> list[Window]:
        with self.scheduler.cond:
            picked = self.scheduler.wait_batch(max_batch, max_wait_s, stop)
            windows = [self.pending.pop(sid) for sid, _ in picked if sid in self.pending]
            now = time.monotonic()
            for window in windows:
                seq, _ = self.seqs.pop(window.stream, (0, now))
                window.seq = seq
                self.seqs[window.stream] = (seq + 1, now)
            while self.seqs and now - next(iter(self.seqs.values()))[1] > self.forget_s:
                self.seqs.popitem(last=False)   # long gone (its end may have been lost)
        return list(windows)

    def live_streams(self) -> dict[str, int]:
        """Every stream with frames and no end yet -> the last seq it was given."""
        with self.scheduler.cond:
            return {sid: seq - 1 for sid, (seq, _) in self.seqs.items()}


class ModelStep:
    """The parent's share of the ``Pipeline``: the workers computed the model's inputs; the
    model runs here on batches mixing every worker's windows; ``encode`` makes the message
    that takes a result back to the stream's worker (which encodes and publishes it)."""

    encoding = "raw"

    def __init__(self, pipeline: Pipeline, workers: int) -> None:
        self.pipeline, self.workers = pipeline, workers
        self.hop_seconds = pipeline.hop_seconds

    def features(self, batch: Batch) -> Batch:
        windows: list[Any] = batch.windows
        batch.features = np.stack([w.audio for w in windows])
        batch.levels = (np.array([w.rms for w in windows]), np.array([w.peak for w in windows]))
        batch.timings_ms["features"] = max(w.features_ms for w in windows)
        return batch

    def infer(self, batch: Batch) -> np.ndarray:
        return self.pipeline.infer(batch)

    def split(self, batch: Batch, out: np.ndarray) -> list[Result]:
        return self.pipeline.split(batch, out)

    def encode(self, result: Result) -> list[bytes]:
        return result_message(worker_of(result.header["stream"], self.workers), result)


class ResultRouter:
    """The parent's "publisher": each result message goes to its worker's ipc socket (dropped
    and counted while that worker is down)."""

    def __init__(self, pushes: list[zmq.Socket]) -> None:
        self.pushes, self.lost = pushes, 0

    def publish(self, parts: list[bytes], stream: str | None = None,
                seq: int | None = None) -> None:
        """``Publisher.publish``'s form; ``stream`` and ``seq`` are the workers' to keep."""
        try:
            self.pushes[int(parts[0])].send_multipart(parts[1:], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.lost += 1

    def poll_subscriptions(self, timeout_ms: int = 0) -> int:
        return 0


class WorkerProcesses:
    """The N worker processes: started, watched, started again when one dies, stopped."""

    def __init__(self, config: Path, workers: int) -> None:
        self.config, self.count = config, workers
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self.deaths: list[float] = []
        self.restarts = 0
        self.lock = threading.Lock()      # no restart once the stop has begun
        self.stop_deadline: float | None = None

    def start(self, index: int) -> None:
        self.procs[index] = subprocess.Popen(
            [sys.executable, "-m", "runtime.serve.worker", str(self.config), str(index)],
            env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        log(f"worker {index} started (pid {self.procs[index].pid})")   # type: ignore[union-attr]

    def check(self) -> list[int]:
        """Start again every worker that died (one line each); the indices restarted."""
        restarted = []
        with self.lock:
            for index, proc in enumerate(self.procs):
                if self.stop_deadline is None and proc is not None and proc.poll() is not None:
                    self._restart(index, proc)
                    restarted.append(index)
        return restarted

    def _restart(self, index: int, proc: subprocess.Popen[bytes]) -> None:
        """One line, and the worker started again; raises the one-line error when workers
        keep dying."""
        code = proc.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        now = time.monotonic()
        self.deaths = [t for t in self.deaths if now - t < DEATHS_WINDOW_S] + [now]
        if len(self.deaths) >= DEATHS_LIMIT:
            raise S2IError(f"worker {index} (pid {proc.pid}) died ({how}): "
                           f"{len(self.deaths)} worker deaths within {DEATHS_WINDOW_S:g} s; "
                           "stopping the server")
        log(f"worker {index} (pid {proc.pid}) died ({how}); starting it again (its "
            "streams start again with fresh buffers)")
        self.restarts += 1
        self.start(index)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p is not None]

    def terminate(self) -> None:
        """SIGTERM to every worker (once; no restarts from now on)."""
        with self.lock:
            if self.stop_deadline is not None:
                return
            self.stop_deadline = time.monotonic() + STOP_WAIT_S
            for proc in self.procs:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """``terminate``, then SIGKILL to the workers still running ``STOP_WAIT_S`` after."""
        self.terminate()
        deadline = self.stop_deadline or time.monotonic()
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class WorkerServer(NetworkLoop):
    """``NetworkLoop``'s shape (``run``, counters, ``--stats-file``) with the ingress, the
    features and the encoding in worker processes: this process routes audio, runs the model
    step, and proxies the workers' frames to the public PUB socket."""

    def __init__(self, pipeline: Pipeline, publisher: Publisher, ctx: zmq.Context,
                 cfg: ServeConfig, batching: Batching,
                 security: ServerSecurity | None, stop: threading.Event) -> None:
        self.pipeline, self.publisher, self.ctx = pipeline, publisher, ctx
        self.workers = int(cfg.workers)
        self.folder = Path(tempfile.mkdtemp(prefix="s2i-workers-"))   # mode 0700
        self.sockets: list[zmq.Socket] = []
        self._proxy: threading.Thread | None = None
        self.processes: WorkerProcesses | None = None
        self.receiver: threading.Thread | None = None
        self.halt = threading.Event()        # the windows' receiving thread ends (stop too)
        try:
            self._open(cfg, batching, security, stop)
        except BaseException:
            self.close()
            raise

    def _ipc(self, name: str) -> str:
        return f"ipc://{self.folder / name}"

    def _socket(self, kind: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        self.sockets.append(sock)
        return sock

    def _open(self, cfg: ServeConfig, batching: Batching,
              security: ServerSecurity | None, stop: threading.Event) -> None:
        pipeline = self.pipeline
        # Frames: every worker's XPUB connects here; subscribed to everything, so a worker
        # never filters (subscribers' topics are matched once, by the public XPUB).
        self.xsub = self._socket(zmq.XSUB)
        self.xsub.setsockopt(zmq.RCVHWM, INTERNAL_HWM)
        # A worker that exits right after its last messages (its streams' ends): with LINGER 0
        # libzmq drops what the proxy has not read yet when the connection closes.
        self.xsub.setsockopt(zmq.LINGER, 1000)
        bind(self.xsub, self._ipc("frames"), "worker frames (XSUB)")
        self.xsub.send(b"\x01")
        row = (1, pipeline.front_end.n_mels, pipeline.front_end.n_frames) \
            if not pipeline.in_graph else (pipeline.window,)
        self.windows = WorkerWindows(self.ctx, self._ipc("windows"), row, cfg.idle_expiry)
        self.audio_out, results_out = [], []
        for i in range(self.workers):
            for name, out in ((f"audio-{i}", self.audio_out), (f"results-{i}", results_out)):
                push = self._socket(zmq.PUSH)
                push.setsockopt(zmq.IMMEDIATE, 1)      # a worker down: drop, never queue
                push.setsockopt(zmq.SNDHWM, INTERNAL_HWM)
                push.connect(self._ipc(name))
                out.append(push)
        self.front = self._socket(zmq.PULL)
        self.front.setsockopt(zmq.RCVHWM, PULL_RCVHWM)
        self.front.setsockopt(zmq.MAXMSGSIZE, MAX_AUDIO_PAYLOAD_BYTES)
        if security is not None:
            security.secure(self.front, NODES_DOMAIN)
        bind(self.front, cfg.bind, "audio input (PULL)")
        warn_if_open(cfg.bind, "audio input (PULL)", curve=security is not None)
        self.address = self.front.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.routed = self.dropped = 0
        self.say = RateLimitedLog()
        self.router_cpu_s = 0.0
        self.status = StatusLine()
        self.stages = Stages(ModelStep(pipeline, self.workers), self.windows,
                             ResultRouter(results_out), batching, 1,
                             on_published=self.status.update)  # type: ignore[arg-type]
        self._ingress_thread = None
        self.failure = None
        self._next_counters = time.monotonic() + COUNTERS_EVERY_S
        self._last_counters = None
        self.stats_file, self._next_stats = cfg.stats_file, time.monotonic()
        self.retired: dict[str, Any] = {}
        self._write_config(cfg, batching.max_batch)
        self.processes = WorkerProcesses(self.folder / "config.json", self.workers)
        self.receiver = threading.Thread(target=self.windows.run, args=(self.halt,),
                                         name="s2i-windows", daemon=True)
        self.receiver.start()
        for i in range(self.workers):
            self.processes.start(i)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(self.windows.ready) < self.workers and not stop.wait(0.05):
            self.processes.check()
            if time.monotonic() > deadline:
                raise S2IError(f"the worker processes did not start within "
                               f"{READY_TIMEOUT_S:g} s")

    def _write_config(self, cfg: ServeConfig, max_batch: int) -> None:
        p = self.pipeline
        config = {"workers": self.workers, "folder": str(self.folder), "parent": os.getpid(),
                  "session": protocol.SESSION_ID, "manifest": p.translator.manifest,
                  "features": "graph" if p.in_graph else "host", "backend": p.backend,
                  "info": p.info(), "samples": p.samples, "hop": p.hop_seconds,
                  "uncertainty": p.uncertainty, "encoding": p.encoding,
                  "encoding_level": p.encoding_level, "topic": p.topic,
                  "max_batch": max_batch, "max_streams": cfg.max_streams,
                  "idle_expiry": cfg.idle_expiry, "encode_threads": cfg.batching.encode_threads}
        path = self.folder / "config.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)

    # --- threads --------------------------------------------------------------------------

    def start(self, stop: threading.Event) -> None:
        self._ingress_thread = threading.Thread(
            target=guarded("router", lambda: self._route(stop), self.stages.errors, stop),
            name="s2i-router", daemon=True)
        self._ingress_thread.start()
        control = self._socket(zmq.PAIR)
        control.bind(f"inproc://s2i-proxy-{id(self)}")
        self._proxy_control = self._socket(zmq.PAIR)
        self._proxy_control.connect(f"inproc://s2i-proxy-{id(self)}")
        # The public XPUB now belongs to the proxy thread (the publisher's own thread has
        # finished with it: its hello for --wait-subscribers is out).
        self._proxy = threading.Thread(
            target=self._run_proxy, args=(control,), name="s2i-proxy", daemon=True)
        self._proxy.start()
        self.stages.start(stop)

    def _run_proxy(self, control: zmq.Socket) -> None:
        try:
            zmq.proxy_steerable(self.xsub, self.publisher.socket, None, control)
        except zmq.ContextTerminated:
            pass

    def _route(self, stop: threading.Event) -> None:
        """The public PULL: each audio message to its stream's worker, as it came."""
        watch = ConnectionWatch(self.front, "audio input (PULL)", self.say,
                                MAX_AUDIO_PAYLOAD_BYTES)
        start, next_watch = time.thread_time(), time.monotonic() + 1.0
        gathering = False
        try:
            while not stop.is_set():
                ready = next_pass(self.front, gathering)   # as NetworkIngress.run
                count = 0
                while ready and count < MAX_DRAIN:
                    try:
                        parts = self.front.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._forward(parts)
                    count += 1
                gathering = 0 < count < MAX_DRAIN
                if time.monotonic() >= next_watch:
                    watch.poll()
                    next_watch = time.monotonic() + 1.0
                self.router_cpu_s = time.thread_time() - start
        finally:
            watch.close()

    def _forward(self, parts: list[zmq.Frame]) -> None:
        index = route([parts[0].bytes, parts[1].bytes, b""], self.workers) \
            if len(parts) == 3 and len(parts[1]) <= MAX_AUDIO_HEADER_BYTES else 0
        try:
            self.audio_out[index].send_multipart(parts, zmq.NOBLOCK, copy=False)
            self.routed += 1
        except zmq.Again:
            self.dropped += 1
            self.say(f"down:{index}", f"dropping audio for worker {index}: it is not running "
                                      f"({self.dropped} messages dropped so far)")

    def run(self, stop: threading.Event) -> bool:
        """``NetworkLoop.run``; the workers get SIGTERM the moment ``stop`` is set (they end
        their streams while this process's stages finish)."""
        assert self.processes is not None
        processes = self.processes
        def terminate() -> None:
            stop.wait()
            processes.terminate()
            self.halt.set()

        threading.Thread(target=terminate, name="s2i-terminate", daemon=True).start()
        return super().run(stop)

    # --- supervision, counters ------------------------------------------------------------

    def _tick(self) -> None:
        assert self.processes is not None
        for index in self.processes.check():
            stats = self.windows.stats.pop(index, None)
            if stats:                       # keep the dead worker's counts in the totals
                self.retired = _add(self.retired, stats)
        super()._tick()

    def counters(self) -> dict[str, object]:
        workers: dict[str, Any] = dict(self.retired)
        for stats in list(self.windows.stats.values()):
            workers = _add(workers, stats)
        stages = self.stages.counters.as_dict()
        cpu = dict(stages["cpu_s"])
        for stage, value in workers.get("cpu_s", {}).items():
            cpu[stage] = round(cpu.get(stage, 0.0) + value, 4)
        cpu["ingress"] = round(cpu.get("ingress", 0.0) + self.router_cpu_s
                               + self.windows.cpu_s, 4)
        ingress = {key: int(workers.get(key, 0)) for key in (
            "messages", "bad_messages", "refused_streams", "refused_duplicates", "stale_seq",
            "restarts", "expired", "skipped")}
        ingress["skipped"] += self.windows.skipped
        ingress["messages"] = max(ingress["messages"], self.routed)
        ingress["ingress_unexpected_errors"] = int(workers.get("unexpected_errors", 0))
        return {**ingress, **stages, "cpu_s": cpu, "streams": int(workers.get("streams", 0)),
                "workers": self.workers, "worker_restarts": self.processes.restarts
                if self.processes else 0, "worker_frames": int(workers.get("frames", 0)),
                "audio_dropped_worker_down": self.dropped,
                "results_dropped_worker_down": self.stages.publisher.lost,  # type: ignore
                "process_cpu_s": round(time.process_time()
                                       + workers.get("process_cpu_s", 0.0), 4)}

    def stop_workers(self) -> None:
        """SIGTERM to the workers, then the proxy's end: the public XPUB is this thread's
        again (for the streams' ends)."""
        if self.processes is not None:
            self.processes.stop()
        if self._proxy is not None:
            time.sleep(0.05)                 # the workers' last frames through the proxy
            self._proxy_control.send(b"TERMINATE")
            self._proxy.join(1.0)

    def close(self) -> None:
        if self.processes is not None:       # also after a failed start
            self.processes.stop()
        self.halt.set()
        if self.receiver is not None:
            self.receiver.join(1.0)          # it closes its socket
        for sock in self.sockets:
            sock.close(linger=0)
        shutil.rmtree(self.folder, ignore_errors=True)


def _add(total: dict[str, Any], stats: dict[str, Any]) -> dict[str, Any]:
    """Counters added key by key (numbers, and dicts of numbers one level down)."""
    out = dict(total)
    for key, value in stats.items():
        if isinstance(value, dict):
            inner = dict(out.get(key, {}))
            for k, v in value.items():
                if isinstance(v, (int, float)):
                    inner[k] = inner.get(k, 0) + v
            out[key] = inner
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = out.get(key, 0) + value
    return out


def serve_with_workers(cfg: ServeConfig, pipeline: Pipeline, batching: Batching) -> int:
    """``s2i-serve --workers N`` (N >= 2) once the translator is open: the public sockets,
    the workers, the model step, until a signal; every process ends within about a second."""
    ctx = zmq.Context()
    publisher = server = security = None
    failure: S2IError | None = None
    ended = True
    code = 0
    try:
        with stop_on_signals() as stop:
            security = cfg.security.open(ctx)
            publisher = Publisher(ctx, cfg.publish.pub, cfg.publish.topic, pipeline.info(),
                                  sndhwm=pub_hwm(batching.max_batch), security=security)
            server = WorkerServer(pipeline, publisher, ctx, cfg, batching, security, stop)
            if not stop.is_set():
                log(f"serving on {server.address} -> {publisher.address} (backend "
                    f"{pipeline.backend}, {server.workers} worker processes, max batch "
                    f"{batching.max_batch}, max wait {batching.max_wait_s * 1000:g} ms, host "
                    f"{socketlib.gethostname()})")
                wait_for_subscribers(publisher, cfg.publish.wait_subscribers, stop)
            if not stop.is_set():
                ended = server.run(stop)
                failure = server.failure
            server.stop_workers()
            for sid, last_seq in server.windows.live_streams().items():
                publisher.last_seq[sid] = last_seq      # tell subscribers, as serve.py does
                publisher.end(sid, "server-stopped", delay_s=0)
            publisher.flush_ends(force=True)
            log(f"published {server.frames} frames")
            code = exit_code(stop) if failure is None else 2
    finally:
        close_translator(pipeline)
        if server is not None:
            server.close()
        if publisher is not None:
            publisher.close(END_LINGER_MS)
        if security is not None:
            security.close()
        ctx.destroy(linger=0)
    return exit_after(ended, failure, code)
