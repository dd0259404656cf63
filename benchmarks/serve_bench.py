"""``python -m benchmarks serve``: how many real-time streams the real ``s2i-serve`` holds.

One run starts the real server process (``python -m runtime.apps.serve``), a subscriber process
that counts every frame (raw ZeroMQ SUB, headers only) and load processes (``--load-processes``,
default 2) that play N paced capture streams over tcp://127.0.0.1 on real PUSH sockets, in
blocks of ``--block-ms`` (default: ``s2i-capture``'s), their starts spread over one hop. Per N
it records frames delivered / expected (every stream) and per second, hops skipped,
end-to-end latency (capture stamp of a window's last sample -> frame received) p50/p99, the
batch-size histogram, the per-stage split, host CPU per window per stage (the server's thread
clocks, ``s2i-serve --stats-file``), the server's RSS and CPU and the load's CPU. N is held
when every stream gets >= 99% of its frames and p99 <= the hop. In the same run it measures
the batched-step ceiling of the same backend (``benchmarks.throughput.max_streams``: features
+ encoder + generator of S windows in one call, p99 within the hop), and host-only rows: the
same server with its model replaced by a constant-time stand-in
(``benchmarks/standin_serve.py``), labelled so in every output.

``--before DIR`` also runs a second server from another checkout (e.g. the server before
issue 11: ``git worktree add /tmp/s2i-before 5fcb5bd``) with the same load, side by side.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import report
from benchmarks.standin_serve import DEFAULT_STANDIN_MS
from benchmarks.standin_serve import LABEL as STANDIN_LABEL
from runtime.apps.capture import CAPTURE_BLOCK_S
from runtime.config import config_json, parse_config
from runtime.errors import S2IError

DEFAULT_OUT = Path(__file__).parent / "results"
HERE = Path(__file__).resolve().parent
SERVING = re.compile(r"serving on (tcp://\S+) -> (tcp://\S+)")
SKIPPED = re.compile(r"skipped (\d+) late hops")
STAGES = ("features", "encoder", "generator", "encoding")
CPU_COLUMNS = ("ingress", "batching", "features", "split", "encode", "publish", "other")
OVERLOAD_FACTORS = (1.1, 1.5)
LOAD_LINGER_MS = 5000     # a load process's queued blocks get this long to reach the server
# Host-only rows batch like a GPU backend (the stand-in is as cheap per batch as one): at
# most 512 windows, waiting --max-wait-ms (s2i-serve's GPU default, 5 ms) for company.
HOST_ONLY_MAX_BATCH = 512
HOST_ONLY_WAIT_MS = 5.0
CEILING_FRACTIONS = (0.25, 0.5, 0.75, 0.9, 1.0, *OVERLOAD_FACTORS)


def host_only_batching(wait_ms: float = HOST_ONLY_WAIT_MS) -> list[str]:
    return ["--max-batch", str(HOST_ONLY_MAX_BATCH), "--max-wait-ms", f"{wait_ms:g}"]


def wait_label(wait_ms: float) -> str:
    """A host-only row's label suffix when it waits other than the GPU default."""
    return "" if wait_ms == HOST_ONLY_WAIT_MS else f", max wait {wait_ms:g} ms"


# --------------------------------------------------------------------------- the export


def sensitive_export(out_dir: Path, width: float, embedding_dim: int, seed: int = 0) -> Path:
    """An untrained translator whose images depend on the input (BatchNorm statistics
    calibrated on synthetic sounds, ``trainer.calibrate``), exported to ONNX; reused when
    ``out_dir`` already holds one."""
    if (out_dir / "manifest.json").is_file():
        return out_dir
    import torch

    from export.translator import ExportConfig, export_translator
    from trainer.calibrate import calibrate_batchnorm
    from trainer.checkpoint import save_untrained_translator
    from trainer.models import AudioEncoder, DenseGenerator

    torch.manual_seed(seed)
    encoder, generator = AudioEncoder(embedding_dim, width), DenseGenerator(embedding_dim, width)
    calibrate_batchnorm(encoder, generator, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = save_untrained_translator(
        out_dir.parent / f"{out_dir.name}.ckpt.pt", encoder, generator, embedding_dim, width,
        "benchmarks.serve: untrained, input-sensitive, for timing only")
    return export_translator(ExportConfig(checkpoint, out_dir, fused=False, tensorrt=False))


def export_for(checkout: Path, export: Path) -> Path:
    """``export`` as an older checkout's runtime reads it: the same model files (linked), the
    manifest's ``version`` set to that runtime's ``EXPORT_VERSION`` (nothing else differs)."""
    source = next(p for p in (checkout / "runtime" / "model" / "manifest.py",
                              checkout / "runtime" / "manifest.py") if p.exists()).read_text()
    match = re.search(r"^EXPORT_VERSION = (\d+)", source, re.MULTILINE)
    manifest = json.loads((export / "manifest.json").read_text())
    if match is None or int(match.group(1)) == manifest.get("version"):
        return export
    copy = export.with_name(f"{export.name}-as-v{match.group(1)}")
    copy.mkdir(exist_ok=True)
    for path in export.iterdir():
        if path.name != "manifest.json" and not (copy / path.name).exists():
            (copy / path.name).symlink_to(path.resolve())
    manifest["version"] = int(match.group(1))
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return copy


# --------------------------------------------------------------------------- load and subscriber


@dataclass(frozen=True)
class LoadShape:
    """How the paced capture load is made: blocks of ``block_s`` seconds (``s2i-capture``'s
    default unless told), streams split round-robin over ``processes`` load processes, each
    with at most ``max_sockets`` PUSH sockets (streams share them past that)."""

    block_s: float = CAPTURE_BLOCK_S
    processes: int = 2
    max_sockets: int = 256


def load_process(addresses: list[str], streams: list[int], total: int, seconds: float,
                 hop_s: float, rate: int, prefix: str, protocol: int | None, shape: LoadShape,
                 out: Any) -> None:
    """Paced capture streams ``streams`` (of ``total``), starts spread over one hop; stream i
    goes to server ``i % len(addresses)``, always on the same socket."""
    import zmq

    from runtime.wire.protocol import encode_audio

    ctx = zmq.Context()
    per_server = max(1, min(len(streams), shape.max_sockets) // len(addresses))
    sockets: list[list[Any]] = []
    for address in addresses:
        sockets.append([])
        for _ in range(per_server):
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 50)
            push.setsockopt(zmq.LINGER, 0)
            push.connect(address)
            sockets[-1].append(push)
    block = int(rate * shape.block_s)
    t = np.arange(max(2 * rate, 2 * block)) / rate
    sounds = [(0.4 * np.sin(2 * np.pi * (200 + 37 * i) * t)).astype(np.float32)
              for i in range(min(total, 64))]
    n_blocks = max(1, int(round(seconds / shape.block_s)))
    cpu0 = time.process_time()
    start = time.time() + 0.5
    # Every block's due time [stream, block]; stream i starts at i/N of a hop.
    dues = (start + np.asarray(streams, np.float64)[:, None] * hop_s / total
            + (np.arange(n_blocks)[None, :] + 1) * shape.block_s)
    order = np.argsort(dues, axis=None, kind="stable").tolist()
    flat_dues = dues.ravel().tolist()
    unsent = 0
    for flat in order:
        due = flat_dues[flat]
        j, b = divmod(flat, n_blocks)
        i = streams[j]
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)
        sound = sounds[i % len(sounds)]
        offset = (b * block) % (len(sound) - block)
        parts = encode_audio(f"{prefix}{i}", b, sound[offset:offset + block], rate, due,
                             node=f"load-{prefix}{i}")
        if protocol is not None:      # an older server reads only its own protocol number
            header = json.loads(parts[1])
            header["protocol"] = protocol
            parts[1] = json.dumps(header).encode()
        try:
            server = sockets[i % len(sockets)]
            server[j % len(server)].send_multipart(parts, zmq.NOBLOCK)
        except zmq.Again:
            unsent += 1
    cpu1 = time.process_time()
    # Closed with a linger: the last blocks may still be queued in the sockets (a linger of
    # 0 dropped them, and with them each process's last window: "1 of 10 frames missed").
    for push in (push for server in sockets for push in server):
        push.close(linger=LOAD_LINGER_MS)
    ctx.term()
    out.put({"cpu_s": round(cpu1 - cpu0, 3),
             "wall_s": round(time.time() - start, 3), "unsent": unsent,
             "late_s": round(max(0.0, time.time() - max(flat_dues)), 3)})


def run_load(spawn: Any, addresses: list[str], n: int, seconds: float, hop_s: float,
             rate: int, prefix: str, protocol: int | None, shape: LoadShape) -> dict[str, Any]:
    """N paced streams from ``shape.processes`` processes; their summed CPU and worst lag."""
    results: Any = spawn.Queue()
    groups = [list(range(p, n, shape.processes)) for p in range(min(shape.processes, n))]
    procs = [spawn.Process(target=load_process, daemon=True,
                           args=(addresses, group, n, seconds, hop_s, rate, prefix,
                                 protocol, shape, results))
             for group in groups]
    for proc in procs:
        proc.start()
    stats = [results.get(timeout=seconds + 120) for _ in procs]
    for proc in procs:
        proc.join(10)
    return {"cpu_s": round(sum(s["cpu_s"] for s in stats), 3),
            "cpu_s_per_process": [s["cpu_s"] for s in stats],
            "wall_s": max(s["wall_s"] for s in stats),
            "unsent": sum(s["unsent"] for s in stats),
            "late_s": max(s["late_s"] for s in stats),
            "processes": len(procs), "block_s": shape.block_s}


def subscriber_process(addresses: list[str], out: Any, stop: Any) -> None:
    """Every frame's header: (stream, seq, capture time, received, batch, timings), from
    every server of ``addresses`` (ready once each has said hello)."""
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 100000)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    for address in addresses:
        sub.connect(address)
    hellos = 0
    frames: list[tuple[Any, ...]] = []
    while not stop.is_set():
        if not sub.poll(100, zmq.POLLIN):
            continue
        while True:
            try:
                parts = sub.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            received = time.time()
            header = json.loads(parts[1])
            if header.get("kind") == "hello":
                hellos += 1
                if hellos == len(addresses):
                    out.put(("ready",))
                continue
            if header.get("kind") != "frame":     # protocol 2's end messages
                continue
            t = header.get("timings_ms", {})
            frames.append((header["stream"], int(header["seq"]), float(header["capture_time"]),
                           received, int(header.get("batch", 1)),
                           tuple(float(t.get(k, 0.0)) for k in STAGES)))
    sub.close(linger=0)
    ctx.term()
    out.put(("frames", frames))


# --------------------------------------------------------------------------- the server


class Server:
    """The real s2i-serve process (or, with ``standin_ms``, the same server with its model
    replaced by a constant-time stand-in: ``benchmarks/standin_serve.py``), its stderr read
    by a thread and, when its checkout has ``--stats-file``, its counters and per-stage
    thread CPU read from that file."""

    def __init__(self, export: Path, pythonpath: Path, hop_s: float, extra: list[str],
                 standin_ms: float | None = None, stats_file: Path | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=str(pythonpath), PYTHONUNBUFFERED="1")
        server = next(p for p in (pythonpath / "runtime" / "apps" / "serve.py",
                                  pythonpath / "runtime" / "server.py") if p.exists())
        module = ".".join(server.relative_to(pythonpath).with_suffix("").parts)
        entry = ["-m", module] if standin_ms is None else \
            [str(HERE / "standin_serve.py"), "--standin-ms", str(standin_ms)]
        if stats_file is not None and "--stats-file" not in server.read_text():
            stats_file = None                 # an older server: no per-stage CPU figures
        self.stats_file = stats_file
        command = [sys.executable, *entry, "--export", str(export),
                   "--backend", "onnxruntime-cpu", "--bind", "tcp://127.0.0.1:*",
                   "--pub", "tcp://127.0.0.1:*", "--hop", str(hop_s), "--samples", "1",
                   "--wait-subscribers", "1",
                   *(["--stats-file", str(stats_file)] if stats_file else []), *extra]
        self.command = command
        self.process = subprocess.Popen(command, env=env, cwd=str(pythonpath),
                                        stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_line(self, regex: re.Pattern[str], timeout_s: float = 300) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            self.log.append(line)
            if match := regex.search(line):
                return match
        raise S2IError("s2i-serve did not start: " + " | ".join(self.log[-5:]))

    def drain_log(self) -> list[str]:
        while True:
            try:
                self.log.append(self.lines.get_nowait())
            except queue.Empty:
                return self.log

    def pids(self) -> list[int]:
        """The server's process and its children (``--workers``: the worker processes)."""
        pids = [self.process.pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == self.process.pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return pids

    def rss_mb(self) -> float:
        total = 0.0
        for pid in self.pids():
            try:
                lines = Path(f"/proc/{pid}/status").read_text().splitlines()
            except OSError:
                continue
            total += sum(int(line.split()[1]) / 1024 for line in lines
                         if line.startswith("VmRSS:"))
        return round(total, 1)

    def cpu_s(self) -> float:
        """CPU seconds of the server and its live children (worker processes)."""
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stats(self) -> dict[str, Any] | None:
        """The server's newest counters (rewritten every second), or None."""
        if self.stats_file is None:
            return None
        time.sleep(1.2)                     # one rewrite after the last frame
        try:
            return json.loads(self.stats_file.read_text())
        except (OSError, ValueError):
            return None

    def stop(self) -> int:
        self.process.terminate()
        try:
            return self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def host_cpu(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """CPU per window (ms) of each stage between two stats readings: the threads' own clocks
    (ingress, batching, features, model, split, encode, publish); ``other`` = the process's
    CPU minus those (ZeroMQ's I/O thread, ONNX Runtime's pool threads, the main thread);
    ``host`` = everything but the model thread."""
    if not before or not after:
        return {}
    frames = after["frames"] - before["frames"]
    if frames <= 0:
        return {"frames": 0}
    stages = {k: after["cpu_s"][k] - before["cpu_s"].get(k, 0.0) for k in after["cpu_s"]}
    process = after["process_cpu_s"] - before["process_cpu_s"]
    per = {k: round(1000 * v / frames, 3) for k, v in stages.items()}
    per["other"] = round(1000 * (process - sum(stages.values())) / frames, 3)
    per["host"] = round(1000 * (process - stages.get("model", 0.0)) / frames, 3)
    # Wall time over CPU time of the features thread (NumPy, one thread): 1 when it never
    # waits; above 1 it waited for the GIL or for a core (contention, docs/RUNTIME.md).
    features_wall = after["busy_s"]["features"] - before["busy_s"]["features"]
    return {"frames": frames, "ms_per_window": per,
            "skipped": after["skipped"] - before["skipped"],
            "messages": after["messages"] - before["messages"],
            "mean_batch": round(frames / max(1, after["batches"] - before["batches"]), 1),
            "features_wall_over_cpu": round(features_wall / stages["features"], 2)
            if stages.get("features") else None}


def run_server(label: str, export: Path, pythonpath: Path, counts: list[int], seconds: float,
               hop_s: float, rate: int, protocol: int | None, extra: list[str],
               grace_s: float, shape: LoadShape = LoadShape(), standin_ms: float | None = None,
               stop_below: float | None = None, servers: int = 1, workers: int = 1
               ) -> dict[str, Any]:
    """Every N of ``counts`` against ``servers`` server processes (the streams split between
    them, one subscriber for all); with ``stop_below``, stops after the first N whose due
    windows were less than that fraction published (the servers' counters)."""
    spawn = mp.get_context("spawn")
    stats_dir = Path(tempfile.mkdtemp(prefix="s2i-serve-bench-"))
    if workers > 1:
        extra = [*extra, "--workers", str(workers)]
    procs = [Server(export, pythonpath, hop_s, extra, standin_ms, stats_dir / f"stats-{i}.json")
             for i in range(servers)]
    rows: list[dict[str, Any]] = []
    try:
        addresses = [server.wait_line(SERVING).groups() for server in procs]
        frames_q, stop = spawn.Queue(), spawn.Event()
        sub = spawn.Process(target=subscriber_process, daemon=True,
                            args=([pub for _, pub in addresses], frames_q, stop))
        sub.start()
        if frames_q.get(timeout=120)[0] != "ready":
            raise S2IError("benchmark subscriber never saw the server's hello")
        stats0 = sum_stats([server.stats() for server in procs])
        for n in counts:
            # A fresh subscriber per N would cost a handshake; frames are split by prefix.
            prefix = f"n{n}-"
            cpu0 = sum(server.cpu_s() for server in procs)
            load_stats = run_load(spawn, [audio for audio, _ in addresses], n, seconds, hop_s,
                                  rate, prefix, protocol, shape)
            time.sleep(grace_s)
            cpu1 = sum(server.cpu_s() for server in procs)
            rss = round(sum(server.rss_mb() for server in procs), 1)
            stats1 = sum_stats([server.stats() for server in procs])
            row = {"streams": n, "load": load_stats, "server_rss_mb": rss,
                   "server_cpu_s": round(cpu1 - cpu0, 2), "host_cpu": host_cpu(stats0, stats1)}
            stats0 = stats1
            rows.append(row)
            print(f"[{label}] N={n}: sent; server RSS {rss} MB, CPU {cpu1 - cpu0:.1f} s, "
                  f"load CPU {load_stats['cpu_s']} s", file=sys.stderr, flush=True)
            if stop_below is not None and not mostly_served(row, stop_below):
                break
        stop.set()
        kind, frames = frames_q.get(timeout=120)
        sub.join(10)
    finally:
        codes = [server.stop() for server in procs]
        shutil.rmtree(stats_dir, ignore_errors=True)
    log = [line for server in procs for line in server.drain_log()]
    skipped = [int(m.group(1)) for line in log if (m := SKIPPED.search(line))]
    expected = int((seconds - 1.0) / hop_s + 1e-9) + 1   # windows ending at 1 s, 1 s + hop, ...
    for row in rows:
        summarize_row(row, [f for f in frames if f[0].startswith(f"n{row['streams']}-")],
                      expected, hop_s, seconds)
    return {"label": label, "command": " ".join(procs[0].command),
            "exit_code": max(codes, key=abs), "standin_ms": standin_ms, "servers": servers,
            "workers": workers,
            "load_shape": asdict(shape), "skipped_hops_total": sum(skipped), "rows": rows,
            "log_tail": [line for line in log if "Traceback" in line or "error" in line][-5:]}


def sum_stats(readings: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several servers' ``--stats-file`` readings as one (counts and CPU times added)."""
    if not readings or any(r is None for r in readings):
        return None
    total: dict[str, Any] = {}
    for reading in readings:
        assert reading is not None
        for key in ("frames", "skipped", "messages", "batches", "process_cpu_s"):
            total[key] = total.get(key, 0) + reading[key]
        for key in ("cpu_s", "busy_s"):
            for stage, value in reading[key].items():
                total.setdefault(key, {})[stage] = total.get(key, {}).get(stage, 0.0) + value
    return total


def mostly_served(row: dict[str, Any], fraction: float) -> bool:
    """Whether the server's own counters say at least ``fraction`` of this N's due windows
    were published rather than skipped (True when it has no counters)."""
    cpu = row["host_cpu"]
    if not cpu.get("frames"):
        return True
    return bool(cpu["frames"] >= fraction * (cpu["frames"] + cpu["skipped"]))


def summarize_row(row: dict[str, Any], frames: list[tuple[Any, ...]], expected: int,
                  hop_s: float, seconds: float) -> None:
    n = row["streams"]
    per_stream: dict[str, list[tuple[Any, ...]]] = {}
    for f in frames:
        per_stream.setdefault(f[0], []).append(f)
    delivered = [len(per_stream.get(f"n{n}-{i}", [])) for i in range(n)]
    e2e = [(f[3] - f[2]) * 1000 for f in frames]
    lat = report.summarize(e2e) if e2e else {"p50": float("nan"), "p99": float("nan")}
    by_batch: dict[int, int] = {}
    for f in frames:
        by_batch[f[4]] = by_batch.get(f[4], 0) + 1
    batches = {str(b): round(c / b, 1) for b, c in sorted(by_batch.items())}   # batch counts
    stages = {k: round(float(np.mean([f[5][j] for f in frames])), 2) if frames else 0.0
              for j, k in enumerate(STAGES)}
    stages["queues_and_transport"] = round(float(np.mean(e2e)) - sum(stages.values()), 2) \
        if e2e else 0.0
    fractions = [d / expected for d in delivered]
    # The server's own count: frames it published that the subscriber did not receive were
    # dropped past the PUB high-water mark (a burst of a large batch, or a slow subscriber).
    published = row["host_cpu"].get("frames")
    row.update({
        "published": published,
        "published_fraction": round(published / (expected * n), 4) if published else None,
        "expected_per_stream": expected, "delivered": sum(delivered),
        "frames_per_s": round(sum(delivered) / seconds, 1),
        "expected": expected * n, "min_stream_fraction": round(min(fractions), 4),
        "delivered_fraction": round(sum(delivered) / (expected * n), 4),
        "skipped_or_lost": expected * n - sum(delivered),
        "e2e_p50_ms": round(lat["p50"], 1), "e2e_p99_ms": round(lat["p99"], 1),
        "batch_histogram": batches, "stage_mean_ms": stages,
        "held": bool(min(fractions) >= 0.99 and lat["p99"] <= hop_s * 1000),
    })


# --------------------------------------------------------------------------- the ceiling


def ceiling(export: Path, hop_s: float, time_cap_s: float, limit: int = 65536,
            precision: str = "fp32") -> dict[str, Any]:
    from benchmarks.throughput import max_streams
    from runtime.frontend import FrontEndConfig
    from runtime.model.backends import open_translator
    from runtime.serve.pipeline import single_threaded_blas

    single_threaded_blas()            # as the server's stages run it
    translator = open_translator(export, backend="onnxruntime-cpu", precision=precision)
    cfg = FrontEndConfig.from_dict(translator.manifest["front_end"])
    rng = np.random.default_rng(0)
    windows = (rng.standard_normal((16, cfg.n_samples)) * 0.3).astype(np.float32)
    result = max_streams(translator, windows, cfg, k=1, budget_s=hop_s, reps=10,
                         time_cap_s=time_cap_s, bisect_steps=2, limit=limit)
    return {"streams": result["streams"], "curve": result["curve"]}


# --------------------------------------------------------------------------- report


def cpu_cell(row: dict[str, Any]) -> str:
    per = row.get("host_cpu", {}).get("ms_per_window")
    if not per:
        return "-"
    wait = row["host_cpu"].get("features_wall_over_cpu")
    return ("/".join(f"{per.get(k, 0.0):.2f}" for k in CPU_COLUMNS) + f" = {per['host']:.2f}"
            + ("" if wait is None else f" (features wall/CPU {wait:.1f})"))


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| server | N | delivered | worst stream | frames/s | p50 ms | p99 ms "
             "| batches (size: count) | stages ms (feat/enc/gen/png/queue) "
             "| host CPU ms/window (" + "/".join(CPU_COLUMNS) + " = host) | RSS MB "
             "| server CPU s | load CPU s (processes) | held |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        for r in run["rows"]:
            s = r["stage_mean_ms"]
            hist = ", ".join(f"{b}: {c:g}" for b, c in list(r["batch_histogram"].items())[:6])
            lines.append(
                f"| {run['label']} | {r['streams']} | {r['delivered_fraction']:.1%}"
                + ("" if r.get("published_fraction") is None
                   else f" (published {r['published_fraction']:.1%})") + " | "
                f"{r['min_stream_fraction']:.0%} | {r['frames_per_s']:.0f} "
                f"| {r['e2e_p50_ms']:.0f} | {r['e2e_p99_ms']:.0f} "
                f"| {hist} | {s['features']:.1f}/{s['encoder']:.1f}/{s['generator']:.1f}/"
                f"{s['encoding']:.1f}/{s['queues_and_transport']:.0f} | {cpu_cell(r)} "
                f"| {r['server_rss_mb']:.0f} | {r['server_cpu_s']:.1f} "
                f"| {r['load']['cpu_s']:.1f} ({r['load'].get('processes', 1)}) | "
                f"{'yes' if r['held'] else 'no'} |")
    return "\n".join(lines)


def row_at(run: dict[str, Any], n: int) -> dict[str, Any] | None:
    return next((r for r in run["rows"] if r["streams"] == n), None)


def targets(runs: list[dict[str, Any]], capacity: int, hop_s: float) -> dict[str, Any]:
    """Issue 21's figures per server, side by side: held / ceiling, frames per second at
    1.1x and 1.5x the ceiling against at it, host CPU per window at the ceiling; for a
    host-only run its best frames per second and the host CPU per window there."""
    out: dict[str, Any] = {}
    for run in runs:
        if run.get("standin_ms") is not None:
            best = max(run["rows"], key=lambda r: r["frames_per_s"], default=None)
            out[run["label"]] = {
                "kind": "host-only", "processes": run["servers"],
                "workers": run.get("workers", 1),
                "best_frames_per_s": best and best["frames_per_s"],
                "at_streams": best and best["streams"],
                "host_ms_per_window": best and best["host_cpu"].get(
                    "ms_per_window", {}).get("host"),
                "mean_batch": best and best["host_cpu"].get("mean_batch"),
                "server_cpu_ms_per_window": best and round(
                    1000 * best["server_cpu_s"] / max(1, best["delivered"]), 3),
                "load_cpu_s": best and best["load"]["cpu_s"]}
            continue
        at = row_at(run, capacity)
        fps = at["frames_per_s"] if at else None
        over = {}
        for factor in OVERLOAD_FACTORS:
            row = row_at(run, max(1, round(capacity * factor)))
            over[f"{factor:g}x"] = round(row["frames_per_s"] / fps, 3) \
                if row and fps else None
        out[run["label"]] = {
            "kind": "model", "held": held(run), "ceiling": capacity,
            "held_of_ceiling": round(held(run) / capacity, 3) if capacity else None,
            "frames_per_s_at_ceiling": fps, "overload_fps_vs_ceiling": over,
            "host_ms_per_window_at_ceiling": at and at["host_cpu"].get(
                "ms_per_window", {}).get("host")}
    for label, t in list(out.items()):
        one = out.get(label.replace(f", {t.get('processes')} processes", ", 1 process"))
        if t["kind"] == "host-only" and t["processes"] > 1 and one \
                and one["best_frames_per_s"] and t["best_frames_per_s"]:
            t["speedup_vs_1_process"] = round(t["best_frames_per_s"]
                                              / one["best_frames_per_s"], 2)
        one = out.get(label.replace(f", {t.get('workers')} workers", ", 1 worker"))
        if t["kind"] == "host-only" and t.get("workers", 1) > 1 and one \
                and one["best_frames_per_s"] and t["best_frames_per_s"]:
            t["speedup_vs_1_worker"] = round(t["best_frames_per_s"]
                                             / one["best_frames_per_s"], 2)
    return out


def targets_md(summary: dict[str, Any]) -> str:
    lines = ["Issue 21 targets, side by side (host-only rows: the model is a constant-time "
             "stand-in):", ""]
    for label, t in summary.items():
        if t["kind"] == "host-only":
            speedup = t.get("speedup_vs_1_process") or t.get("speedup_vs_1_worker")
            lines.append(f"- {label}: best {t['best_frames_per_s']} frames/s (N = "
                         f"{t['at_streams']}, mean batch {t.get('mean_batch')}), host CPU "
                         f"{t['host_ms_per_window']} ms/window "
                         f"(threads' clocks; whole server {t['server_cpu_ms_per_window']} "
                         f"ms/window), load generator CPU {t['load_cpu_s']} s"
                         + ("" if speedup is None else f"; {speedup:.2f}x one process "
                            "(target >= 1.5x with 2)")
                         + ("" if t.get("workers", 1) == 1 else
                            f" ({t['workers']} worker processes, one model step)"))
        else:
            over = ", ".join(f"{k}: {_pct(v)}" for k, v in t["overload_fps_vs_ceiling"].items())
            lines.append(f"- {label}: held {t['held']} of the ceiling {t['ceiling']} "
                         f"({_pct(t['held_of_ceiling'])}; target >= 90%), frames/s at the "
                         f"ceiling {t['frames_per_s_at_ceiling']}, at 1.1x and 1.5x the "
                         f"ceiling {over} of that (target >= 90%), host CPU at the ceiling "
                         f"{t['host_ms_per_window_at_ceiling']} ms/window")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def plot(runs: list[dict[str, Any]], path: Path, hop_s: float, ceiling_n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for run in runs:
        n = [r["streams"] for r in run["rows"]]
        a.plot(n, [r["e2e_p99_ms"] for r in run["rows"]], "o-", label=run["label"])
        b.plot(n, [r["min_stream_fraction"] for r in run["rows"]], "o-", label=run["label"])
    for ax in (a, b):
        ax.axvline(ceiling_n, color="grey", ls=":", label=f"batched-step ceiling ({ceiling_n})")
        ax.set_xlabel("streams N (hop 1 s, K = 1)")
        ax.legend()
    a.axhline(hop_s * 1000, color="red", ls="--", lw=0.8)
    a.set_ylabel("end-to-end p99 (ms)")
    b.axhline(0.99, color="red", ls="--", lw=0.8)
    b.set_ylabel("delivered fraction, worst stream")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def held(run: dict[str, Any]) -> int:
    return max([r["streams"] for r in run["rows"] if r["held"]], default=0)


QUICK = {"width": 0.125, "dim": 64, "seconds": 3.0, "ceiling_cap": 0.2, "streams": (1, 3),
         "host_only": "4"}


@dataclass
class ServeBenchConfig:
    """``python -m benchmarks serve``'s settings (``--quick``: the ``QUICK`` preset under
    the flags given)."""

    export: Path | None = field(default=None, metadata={
        "help": "export folder (default: build an untrained input-sensitive one of "
                "--width/--dim under --work)"})
    work: Path = Path("/tmp/s2i-serve-bench")
    width: float = 1.0
    dim: int = 512
    streams: tuple[int, ...] = field(default=(), metadata={
        "sep": ",", "help": "N values, e.g. 4,8,16 (default: fractions of the measured "
                            "ceiling, up to 1.5x it)"})
    seconds: float = field(default=12.0, metadata={"help": "load per N"})
    hop: float = 1.0
    before: Path | None = field(default=None, metadata={
        "help": "a checkout of an older server to run side by side"})
    before_protocol: int = field(default=1, metadata={
        "help": "protocol number the older server reads"})
    precision: str = field(default="fp32", metadata={
        "help": "the new server's --precision, also used for the ceiling (int8 needs an "
                "export made with --int8)"})
    encoding: str = field(default="png", metadata={"help": "every server's --encoding"})
    server_args: str = field(default="", metadata={
        "help": "extra s2i-serve options (new server)"})
    ceiling_cap: float = field(default=6.0, metadata={
        "help": "seconds per batch size when measuring the ceiling"})
    block_ms: float = field(default=CAPTURE_BLOCK_S * 1000, metadata={
        "help": "audio per load message (default: s2i-capture's; 50 was the old capture "
                "block)"})
    load_processes: int = field(default=2, metadata={
        "help": "processes generating the load"})
    host_only: str = field(default="auto", metadata={
        "help": "N values for the host-only rows (the real server, its model a constant-time "
                "stand-in), e.g. 200,400,800; 'auto': doubling from the ceiling until under "
                "90%% is served; 'none': skip"})
    host_only_wait_ms: tuple[float, ...] = field(default=(HOST_ONLY_WAIT_MS,), metadata={
        "sep": ",", "help": "host-only runs with each of these --max-wait-ms (default: 5, "
                            "the GPU default); longer waits make the larger batches of a busy "
                            "GPU host, e.g. 5,20,50 splits host CPU into per-batch and "
                            "per-window costs"})
    host_only_processes: tuple[int, ...] = field(default=(1, 2), metadata={
        "sep": ",", "help": "host-only runs with this many independent server processes, "
                            "the streams split between them (1,2: the process-scaling "
                            "efficiency)"})
    workers: tuple[int, ...] = field(default=(), metadata={
        "sep": ",", "help": "also run the new server with s2i-serve --workers W for each W, "
                            "e.g. 1,2 (model rows and host-only rows, labelled '..., W "
                            "worker(s)'; host-only targets then give the speedup over 1)"})
    standin_ms: float = field(default=DEFAULT_STANDIN_MS, metadata={
        "help": "the stand-in's time per batch (like a GPU call)"})
    quick: bool = field(default=False, metadata={
        "switch": True, "help": "a smoke run: tiny model, N 1,3, 3-s loads, no plot"})
    out: Path = DEFAULT_OUT
    name: str | None = field(default=None, metadata={
        "help": "results file stem (default: serve-<host>)"})

    def __post_init__(self) -> None:
        if self.load_processes < 1 or not 1 <= self.block_ms <= 2000:
            raise ValueError("--load-processes must be at least 1 and --block-ms 1-2000, got "
                             f"{self.load_processes} and {self.block_ms:g}")
        if self.host_only not in ("auto", "none") \
                and not all(n.isdigit() for n in self.host_only.split(",")):
            raise ValueError(f"--host-only must be auto, none or N values like 200,400, got "
                             f"{self.host_only!r}")
        if any(w < 1 for w in self.workers):
            raise ValueError(f"--workers takes counts of at least 1, got {self.workers}")


def main(argv: list[str] | None = None) -> int:
    args = parse_config(ServeBenchConfig, argv if argv is not None else sys.argv[1:],
                        "python -m benchmarks serve", __doc__.split("\n\n")[0],
                        presets={"quick": QUICK})
    shape = LoadShape(block_s=args.block_ms / 1000, processes=args.load_processes)
    export = args.export or sensitive_export(
        args.work / f"export-w{args.width:g}-d{args.dim}", args.width, args.dim)
    from runtime.frontend import FrontEndConfig
    from runtime.model.manifest import load_export_manifest

    rate = FrontEndConfig.from_dict(load_export_manifest(export)["front_end"]).sample_rate
    top = ceiling(export, args.hop, args.ceiling_cap, limit=8 if args.quick else 65536,
                  precision=args.precision)
    print(f"batched-step ceiling: {top['streams']} streams", file=sys.stderr, flush=True)
    capacity = max(2, top["streams"])
    if args.streams:
        counts = list(args.streams)
    else:
        counts = sorted({max(1, round(capacity * f)) for f in CEILING_FRACTIONS})
    host_counts = host_only_counts(args.host_only, capacity)
    here = Path(__file__).resolve().parents[1]
    servers = [("after", here, export, None,
                ["--precision", args.precision, "--encoding", args.encoding,
                 *args.server_args.split()])]
    if args.before is not None:
        before = args.before.resolve()
        servers.insert(0, ("before", before, export_for(before, export), args.before_protocol,
                           ["--encoding", args.encoding]))
    grace = 2.0 * args.hop + 1.0
    workers = args.workers
    runs = [run_server(label, folder, path, counts, args.seconds, args.hop, rate, protocol,
                       extra, grace, shape) for label, path, folder, protocol, extra in servers]
    after = servers[-1]
    for w in workers:
        runs.append(run_server(f"{after[0]}, {w} worker" + "s" * (w > 1), after[2], after[1],
                               counts, args.seconds, args.hop, rate, after[3], after[4], grace,
                               shape, workers=w))
        if host_counts:
            runs.append(run_server(
                f"{after[0]}, {STANDIN_LABEL} ({args.standin_ms:g} ms), {w} worker"
                + "s" * (w > 1), after[2], after[1], host_counts, args.seconds, args.hop, rate,
                after[3], [*after[4], *host_only_batching()], grace, shape,
                standin_ms=args.standin_ms, stop_below=None if args.quick else 0.9,
                workers=w))
    for processes, wait in [(p, w) for p in args.host_only_processes
                            for w in args.host_only_wait_ms] if host_counts else ():
        for label, path, folder, protocol, extra in servers:
            runs.append(run_server(
                f"{label}, {STANDIN_LABEL} ({args.standin_ms:g} ms), {processes} process"
                + "es" * (processes > 1) + wait_label(wait), folder, path, host_counts,
                args.seconds, args.hop, rate, protocol, [*extra, *host_only_batching(wait)],
                grace, shape,
                standin_ms=args.standin_ms, stop_below=None if args.quick else 0.9,
                servers=processes))
    summary = targets(runs, capacity, args.hop)
    result = {
        "benchmark": "serve", "machine": report.machine_info(), "versions": report.versions(),
        "note": "compare rows of one run, not across runs (machine.load_average: the load "
                "when the run started); host-only rows replace the model by a constant-time "
                "stand-in (benchmarks/standin_serve.py)",
        "export": str(export), "width": args.width, "embedding_dim": args.dim,
        "precision": args.precision, "encoding": args.encoding,
        "hop_s": args.hop, "k": 1, "seconds_per_n": args.seconds, "load_shape": asdict(shape),
        "config": config_json(args), "ceiling": top, "runs": runs, "targets": summary,
        "held": {run["label"]: held(run) for run in runs if run["standin_ms"] is None},
    }
    stem = args.name or ("serve-quick" if args.quick
                         else f"serve-{report.machine_slug(result['machine'])}")
    md = (f"Batched-step ceiling: {top['streams']} streams. Held (>= 99% to every stream, "
          f"p99 <= {args.hop * 1000:.0f} ms): "
          + ", ".join(f"{k} {v}" for k, v in result["held"].items())
          + f". Load: {shape.processes} processes, {shape.block_s * 1000:g}-ms blocks; "
          f"encoding {args.encoding}, K = 1.\n\n"
          + targets_md(summary) + "\n\n" + table(runs))
    report.write_result(args.out, stem, result, md)
    if not args.quick:
        plot([r for r in runs if r["standin_ms"] is None], args.out / f"{stem}.png", args.hop,
             top["streams"])
    print(md)
    return 0


def host_only_counts(spec: str, capacity: int) -> list[int]:
    """The N grid of the host-only rows: given, none, or doubling from the ceiling (the run
    stops at the first N under 90% served)."""
    if spec == "none":
        return []
    if spec != "auto":
        return [int(n) for n in spec.split(",")]
    return [capacity * 2 ** i for i in range(7)]
