"""``python -m benchmarks host-path``: host CPU per audio message and per window, per stage, of
the server's own functions, measured with THREAD CPU CLOCKS (so it means something on a
loaded machine, unlike wall time).

The real ``NetworkIngress`` reads pre-encoded audio messages (``--block-ms`` blocks, half the
streams at 44.1 kHz, half at the model rate) from a real PULL socket, fed by a separate load
process; the calling thread takes the due windows (``take``: batching) and runs the real
``Pipeline.features`` (audio-in graph: stacking, sanitising, levels), ``split`` (an
input-independent stand-in output, no model), ``encode`` (``raw``) and ``Publisher.publish``
to a subscriber in the load process. ``--direct`` skips the socket: ``handle`` is called on
each message (the ingress's Python work alone). Prints CPU microseconds per message and per
window per stage; ``other`` is the process's CPU outside those threads (ZeroMQ's I/O thread).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from runtime.config import parse_config
from runtime.errors import S2IError

MODEL_RATE = 16000
OTHER_RATE = 44100
IMAGE = (64, 64)          # generator output side (width 0.25 gives images of this order)
STAGES = ("ingress", "batching", "features", "split", "encode", "publish")


class StubTranslator:
    """The translator's interface with the front end in the graph, no model behind it."""

    features = "graph"
    backend = "stub"

    def __init__(self) -> None:
        from runtime.frontend import FrontEndConfig

        self.manifest = {"front_end": asdict(FrontEndConfig()), "dropout": [], "classes": []}
        self.dropout: list[Any] = []

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        return np.zeros((len(audio), 8), np.float32)

    def generate(self, z: np.ndarray, masks: Any) -> np.ndarray:
        return np.zeros((len(z), 3, *IMAGE), np.float32)


def messages(streams: int, blocks: int, block_s: float) -> list[list[bytes]]:
    """Every stream's ``blocks`` blocks, in time order (one block of every stream, then the
    next); half the streams at 44.1 kHz. Payloads are shared between messages."""
    from runtime.wire.protocol import encode_audio

    rng = np.random.default_rng(0)
    payloads = {}
    for rate in (MODEL_RATE, OTHER_RATE):
        block = (rng.standard_normal(int(rate * block_s)) * 0.3).astype(np.float32)
        payloads[rate] = encode_audio("x", 0, block, rate, 0.0)[2]
    out = []
    for b in range(blocks):
        for s in range(streams):
            rate = OTHER_RATE if s % 2 else MODEL_RATE
            parts = encode_audio(f"s{s}", b, np.zeros(0, np.float32), rate,
                                 1000.0 + (b + 1) * block_s)
            out.append([parts[0], parts[1], payloads[rate]])
    return out


def load(address: str, pub: str, streams: int, blocks: int, block_s: float, ready: Any,
         done: Any) -> None:
    """Sends the messages (as fast as the server's HWM lets it) and drains the frames."""
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(pub)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 100000)
    push.connect(address)
    msgs = messages(streams, blocks, block_s)
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            if sub.poll(50):
                while True:
                    try:
                        sub.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    ready.wait()
    for parts in msgs:
        push.send_multipart(parts, copy=False)
    done.wait()
    stop.set()
    thread.join()
    push.close(linger=0)
    sub.close(linger=0)
    ctx.term()


def run(streams: int, blocks: int, block_s: float, direct: bool) -> dict[str, Any]:
    import zmq

    from runtime.serve.ingress import NetworkIngress
    from runtime.serve.pipeline import Batch, Pipeline
    from runtime.wire.protocol import Publisher

    pipeline = Pipeline(StubTranslator(), encoding="raw")
    ctx = zmq.Context()
    ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", MODEL_RATE, pipeline.window,
                             pipeline.hop, max_streams=streams + 1)
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", pipeline.info(), sndhwm=100000)
    total = streams * blocks
    cpu = dict.fromkeys(STAGES, 0.0)
    out = np.zeros((512, 3, *IMAGE), np.float32)
    frames = 0
    stop = threading.Event()

    def stages(wait_s: float) -> int:
        """One pass of the stages over what is due now; returns the windows taken."""
        nonlocal frames
        if not ingress.scheduler.due:       # take() would wait for the first due stream
            return 0
        clock = time.thread_time()
        windows = ingress.take(512, wait_s, stop)
        clock = _add(cpu, "batching", clock)
        if not windows:
            return 0
        batch = pipeline.features(Batch(windows))
        clock = _add(cpu, "features", clock)
        results = pipeline.split(batch, out[:len(windows)])
        clock = _add(cpu, "split", clock)
        encoded = [pipeline.encode(r) for r in results]
        clock = _add(cpu, "encode", clock)
        for parts in encoded:
            publisher.publish(parts)
        _add(cpu, "publish", clock)
        frames += len(windows)
        return len(windows)

    spawn = mp.get_context("spawn")
    ready, done = spawn.Event(), spawn.Event()
    sender = None
    if not direct:
        sender = spawn.Process(target=load, args=(ingress.address, publisher.address, streams,
                                                  blocks, block_s, ready, done), daemon=True)
        sender.start()
        while publisher.poll_subscriptions(100) < 1:
            pass
    process0 = time.process_time()
    if direct:
        msgs = messages(streams, blocks, block_s)
        for i in range(0, total, streams):
            clock = time.thread_time()
            for parts in msgs[i:i + streams]:
                ingress.handle(parts)
            _add(cpu, "ingress", clock)
            stages(0.0)
    else:
        thread = threading.Thread(target=ingress.run, args=(stop,), daemon=True)
        thread.start()
        ready.set()
        deadline = time.monotonic() + 600
        while ingress.counters.messages < total and time.monotonic() < deadline:
            if not stages(0.005):
                time.sleep(0.001)
        while stages(0.0):
            pass
        stop.set()
        thread.join()
        cpu["ingress"] = ingress.cpu_s
    process = time.process_time() - process0
    done.set()
    if sender is not None:
        sender.join(30)
    if direct:
        ingress.pull.close(linger=0)
    ctx.destroy(linger=0)     # the publisher's and the ingress's sockets and monitors
    counters = ingress.counters.as_dict()
    result = {"mode": "direct" if direct else "socket", "streams": streams, "blocks": blocks,
              "block_ms": block_s * 1000, "messages": counters["messages"], "windows": frames,
              "bad_messages": counters["bad_messages"], "skipped": counters["skipped"],
              "us_per_message": {"ingress": round(1e6 * cpu["ingress"] / max(1, total), 1)},
              "us_per_window": {k: round(1e6 * v / max(1, frames), 1) for k, v in cpu.items()}}
    result["us_per_window"]["other"] = round(1e6 * (process - sum(cpu.values()))
                                             / max(1, frames), 1)
    result["us_per_window"]["host"] = round(1e6 * process / max(1, frames), 1)
    return result


def timed_wait_cpu_us(waits: int = 200) -> float:
    """This machine's CPU cost of one timed wait (a 1-ms ``time.sleep``, as a ``Condition``
    or ``queue`` wait with a timeout, and CPython's GIL wait, arm a timer): thread CPU
    microseconds per wait: 27-48 on this project's 2-core VM (its timer exits are charged
    to the thread); every stage thread's wake-up pays it."""
    clock = time.thread_time()
    for _ in range(waits):
        time.sleep(0.001)
    return round(1e6 * (time.thread_time() - clock) / waits, 1)


def _add(cpu: dict[str, float], stage: str, since: float) -> float:
    now = time.thread_time()
    cpu[stage] += now - since
    return now


@dataclass
class HostPathConfig:
    streams: int = field(default=200, metadata={
        "help": "streams, half at 44.1 kHz, half at 16 kHz"})
    messages: int = field(default=20000, metadata={
        "help": "audio messages in all (rounded to whole blocks of every stream)"})
    block_ms: float = field(default=250.0, metadata={"help": "capture block length, ms"})
    direct: bool = field(default=False, metadata={
        "switch": True,
        "help": "call NetworkIngress.handle directly (no socket, no load process)"})

    def __post_init__(self) -> None:
        if self.streams < 1 or self.messages < 1 or not 0 < self.block_ms <= 1000:
            raise S2IError("invalid HostPathConfig: --streams and --messages must be at least 1, "
                           "--block-ms in (0, 1000]")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(HostPathConfig, sys.argv[1:] if argv is None else argv,
                       "python -m benchmarks host-path", __doc__.split("\n\n")[0])
    blocks = max(1, cfg.messages // cfg.streams)
    result = run(cfg.streams, blocks, cfg.block_ms / 1000, cfg.direct)
    result["timed_wait_cpu_us"] = timed_wait_cpu_us()
    result["config"] = asdict(cfg)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    # also as a script, to measure another checkout's runtime:
    # PYTHONPATH=/that/checkout python benchmarks/host_path.py
    sys.exit(main())
