"""s2i-serve as a multi-stream server (issue 11), with the input-sensitive tiny export:
batching across streams keeps every stream's own image, seq and position; hostile audio
messages cost only themselves; --max-streams and duplicate stream ids are refused and told;
SIGTERM ends the server within a second, also while it is blocked."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI, run_cli, tiny_export

from runtime.model.translator import EncoderGenerator
from runtime.wire.client import Subscriber
from runtime.wire.protocol import encode_audio

ADDRESS = r"(tcp://127\.0\.0\.1:\d+)"
RATE = 16000


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def sounds() -> list[np.ndarray]:
    t = np.arange(RATE) / RATE
    tones = [0.5 * np.sin(2 * np.pi * f * t) for f in (220, 1500, 5000)]
    noise = np.random.default_rng(1).standard_normal(RATE) * 0.3
    return [np.asarray(a, np.float32) for a in (*tones, noise)]


def test_a_mixed_batch_gives_each_stream_its_own_image(export):
    from runtime.model.backends import open_translator
    from runtime.serve.pipeline import Pipeline, Window

    k = 2
    pipeline = Pipeline(open_translator(export, backend="onnxruntime-cpu"), samples=k,
                        uncertainty=True, seed=0)
    windows = [Window(f"s{i}", audio, 100.0 + i, 1.0 + i, seq=10 * i)
               for i, audio in enumerate(sounds())]
    masks = pipeline.draw_masks(len(windows) * k)
    mixed = pipeline.process_batch(windows, masks)
    for i, window in enumerate(windows):
        alone = pipeline.process_batch([window], [m[i * k:(i + 1) * k] for m in masks])[0]
        np.testing.assert_array_equal(mixed[i].images, alone.images)
        np.testing.assert_array_equal(mixed[i].uncertainty, alone.uncertainty)
        h = mixed[i].header
        assert (h["stream"], h["seq"], h["position_s"], h["capture_time"], h["batch"]) == \
            (f"s{i}", 10 * i, 1.0 + i, 100.0 + i, len(windows))
    # The model is input-sensitive: a mix-up between streams could not pass unseen.
    for i in range(1, len(windows)):
        diff = np.abs(mixed[i].images.astype(int) - mixed[0].images.astype(int)).mean()
        assert diff > 10, f"stream {i} looks like stream 0 ({diff:.1f} grey levels apart)"


class SlowTranslator(EncoderGenerator):
    """A real translator whose generator call takes ``delay`` seconds more."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay, self.calls = inner, delay, []
        self.manifest, self.backend, self.dropout = inner.manifest, "slow", inner.dropout

    def encode(self, features):
        return self.inner.encode(features)

    def generate(self, z, masks):
        self.calls.append(len(z))
        time.sleep(self.delay)
        return self.inner.generate(z, masks)


def test_one_batching_value_reaches_the_ingress_and_the_stages_at_construction(export):
    import dataclasses

    from runtime.errors import S2IError
    from runtime.model.backends import open_translator
    from runtime.serve.batching import Batching
    from runtime.serve.engine import NetworkLoop
    from runtime.serve.pipeline import Pipeline
    from runtime.wire.protocol import Publisher

    for bad in ((0, 0.01), (True, 0.01), (8, -0.001), (8, 1.5)):
        with pytest.raises(S2IError, match="max (batch|wait)"):
            Batching(*bad)
    batching = Batching(8, 0.02)
    with pytest.raises(dataclasses.FrozenInstanceError):
        batching.max_batch = 2      # type: ignore[misc]
    pipeline = Pipeline(open_translator(export, backend="onnxruntime-cpu"), encoding="raw")
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", pipeline.topic, pipeline.info())
    try:
        loop = NetworkLoop(pipeline, publisher, ctx, "tcp://127.0.0.1:*", batching)
        assert loop.ingress.batching is batching and loop.stages.batching is batching
        assert loop.stages.batch_limit() == 8
    finally:
        ctx.destroy(linger=0)


def test_streams_keep_their_seq_and_positions_under_batching(export):
    from runtime.model.backends import open_translator
    from runtime.serve.batching import Batching
    from runtime.serve.engine import NetworkLoop
    from runtime.serve.pipeline import Pipeline
    from runtime.wire.protocol import Publisher

    slow = SlowTranslator(open_translator(export, backend="onnxruntime-cpu"), delay=0.15)
    pipeline = Pipeline(slow, hop_seconds=0.25, encoding="raw")
    streams, block, seconds = [f"cam-{i}" for i in range(5)], RATE // 20, 3
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", pipeline.topic, pipeline.info())
    published: list[dict] = []
    publish = publisher.publish
    publisher.publish = lambda parts, *header: (published.append(json.loads(parts[1])),
                                                publish(parts, *header))
    loop = NetworkLoop(pipeline, publisher, ctx, "tcp://127.0.0.1:*", Batching(8, 0.02))
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    push = ctx.socket(zmq.PUSH)
    push.connect(loop.address)
    runner.start()
    try:
        for seq, start in enumerate(range(0, seconds * RATE, block)):   # paced 4x real time
            for sid, audio in zip(streams, sounds() + sounds(), strict=False):
                push.send_multipart(encode_audio(sid, seq, audio[:block], RATE,
                                                 100.0 + (start + block) / RATE))
            time.sleep(block / RATE / 4)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [loop.ingress.streams.get(s) for s in streams]
            if all(st is not None and st.next_total > st.ring.written for st in states) \
                    and len(published) == sum(st.frames for st in states):
                break
            time.sleep(0.05)
    finally:
        stop.set()
        runner.join(5)
        push.close(linger=0)
        publisher.close()
        ctx.destroy(linger=0)
    assert max(h["batch"] for h in published) > 1, "no batch mixed streams"
    assert max(slow.calls) > 1
    for sid in streams:
        mine = [h for h in published if h["stream"] == sid]
        assert [h["seq"] for h in mine] == list(range(len(mine))) and len(mine) >= 2, sid
        positions = [h["position_s"] for h in mine]
        assert positions == sorted(set(positions)) and positions[-1] == seconds, sid


class GoodStream(threading.Thread):
    """A paced capture node (its own PUSH socket) sending one stream in 50-ms blocks."""

    def __init__(self, address: str, stream: str) -> None:
        super().__init__(daemon=True)
        self.address, self.stream, self.stop = address, stream, threading.Event()

    def run(self) -> None:
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(self.address)
        audio, block, seq = sounds()[1], RATE // 20, 0
        start = time.monotonic()
        while not self.stop.is_set():
            chunk = audio[(seq * block) % RATE:][:block]
            push.send_multipart(encode_audio(self.stream, seq, chunk, RATE, time.time(),
                                             node="good-node"))
            seq += 1
            time.sleep(max(0.0, start + seq * block / RATE - time.monotonic()))
        push.close(linger=0)
        ctx.term()


def assert_still_serving(sub: Subscriber, stream: str, what: str, within: float = 1.0) -> None:
    """A frame of ``stream`` made after this moment arrives within ``within`` seconds."""
    sent = time.time()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        frame = sub.receive(max(0.01, deadline - time.monotonic()))
        if frame is not None and frame.header["stream"] == stream \
                and frame.header["capture_time"] >= sent:
            return
    raise AssertionError(f"after {what}, no new frame of {stream} within {within:g} s")


@contextlib.contextmanager
def serving_a_good_stream(server: CLI) -> Iterator[tuple[str, Subscriber, zmq.Context,
                                                          GoodStream]]:
    """While ``server`` serves a paced stream "good": its audio address, a ready subscriber
    that has seen the stream's first frame, a ZeroMQ context for other sockets, and the
    stream. Afterwards everything is closed and the server killed if it still runs."""
    good_stream = None
    ctx = zmq.Context()
    try:
        audio, pub = server.wait_line(f"serving on {ADDRESS} -> {ADDRESS}").groups()
        with Subscriber(pub) as sub:
            sub.wait_ready(20)
            good_stream = GoodStream(audio, "good")
            good_stream.start()
            assert_still_serving(sub, "good", "starting", within=10)   # its first 1-s window
            yield audio, sub, ctx, good_stream
    finally:
        if good_stream is not None:
            good_stream.stop.set()
        ctx.destroy(linger=0)
        server.kill()


def hostile_messages(good: list[bytes]) -> dict[str, list[list[bytes]]]:
    header = json.loads(good[1])

    def edited(payload: bytes = good[2], **changes) -> list[bytes]:
        return [b"audio", json.dumps(dict(header, **changes)).encode(), payload]

    return {
        "sample_rate 1 with a 64 KB payload": [edited(b"\x00" * 65536, sample_rate=1)],
        "sample_rate 1e20": [edited(sample_rate=1e20)],
        "not JSON, deep JSON, a huge header": [
            [b"audio", b"\xff not json", good[2]], [b"audio", b"[" * 1500, good[2]],
            [b"audio", b" " * 100000, good[2]]],
        "5,000 distinct stream ids": [edited(stream=f"flood-{i}", node="flood")
                                      for i in range(5000)],
    }


def test_hostile_messages_cost_only_themselves(export):
    server = CLI("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*",
                 "--pub", "tcp://127.0.0.1:*", "--hop", "0.25", "--encoding", "raw",
                 "--max-streams", "16")
    with serving_a_good_stream(server) as (audio_address, sub, ctx, good_stream):
        hostile = ctx.socket(zmq.PUSH)
        hostile.connect(audio_address)
        good = encode_audio("other", 0, np.zeros(800, np.float32), RATE, time.time())
        for what, messages in hostile_messages(good).items():
            for parts in messages:
                hostile.send_multipart(parts)
            assert_still_serving(sub, "good", what)
        # A second capture node claims the live stream id: refused and told once.
        for seq in range(20):
            hostile.send_multipart(encode_audio("good", seq, np.zeros(800, np.float32),
                                                RATE, time.time(), node="intruder"))
            time.sleep(0.02)
        assert_still_serving(sub, "good", "a second node claiming its stream id")
        # A part over any valid size: libzmq drops that connection, nobody else.
        hostile.send_multipart([b"audio", b"{}", b"\x00" * (6 * 1024 * 1024)])
        assert_still_serving(sub, "good", "an oversized message")
        hostile.close(linger=0)
        good_stream.stop.set()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0, server.stderr()
        assert time.monotonic() - started < 1.0, "SIGTERM took over a second"
    err = server.stderr()
    assert "Traceback" not in err and "shut down cleanly" in err
    assert "'sample_rate' should be an integer in [8000, 192000]" in err
    assert err.count("refusing new stream") == 1 and "--max-streams 16" in err
    assert err.count("refusing audio for stream 'good' from node intruder") == 1
    assert err.count("ignoring a bad audio message") <= 6      # one line per kind of fault


SLOW_SERVER = """
import sys, time
import runtime.serve.options as options
real = options.open_model

from runtime.model.translator import EncoderGenerator

class Blocking(EncoderGenerator):
    def __init__(self, inner):
        self.inner, self.manifest, self.dropout = inner, inner.manifest, inner.dropout
        self.backend = "blocking"
    def encode(self, features):
        return self.inner.encode(features)
    def generate(self, z, masks):
        print("[s2i] test: model call started", file=sys.stderr, flush=True)
        time.sleep(60)

options.open_model = lambda model: Blocking(real(model))
from runtime.apps.serve import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_ends_the_server_within_a_second_in_every_state(export):
    def stop_within_a_second(cli: CLI) -> None:
        started = time.monotonic()
        cli.signal(signal.SIGTERM)
        code = cli.wait(10)
        took = time.monotonic() - started
        assert code == 0 and took < 1.0, f"exit {code} after {took:.2f} s:\n{cli.stderr()}"

    common = ["--export", str(export), "--bind", "tcp://127.0.0.1:*", "--pub",
              "tcp://127.0.0.1:*", "--encoding", "raw"]
    waiting = CLI("s2i-serve", *common, "--wait-subscribers", "1")       # blocked on subscribers
    try:
        waiting.wait_line("waiting for 1 subscriber")
        stop_within_a_second(waiting)
    finally:
        waiting.kill()
    cli = CLI("s2i-serve", *common, code=SLOW_SERVER)
    try:
        address = cli.wait_line(f"serving on {ADDRESS}").group(1)
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(address)
        push.send_multipart(encode_audio("s", 0, sounds()[0], RATE, time.time()))
        cli.wait_line("model call started")                               # blocked in the model
        stop_within_a_second(cli)
        push.close(linger=0)
        ctx.term()
    finally:
        cli.kill()
    assert "still busy at shutdown" in cli.stderr()


EXPIRY_SCRIPT = """
import sys, time
import numpy as np, zmq
from runtime.serve import memory
from runtime.serve.ingress import NetworkIngress
from runtime.wire.protocol import encode_audio

if not memory._glibc():
    print("skip"); sys.exit(0)

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None

ctx = zmq.Context()
ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", RATE, RATE, RATE, max_streams=1000,
                         idle_expiry_s=0.0)
block = np.zeros(800, np.float32)
before = rss_mb()
for i in range(1500):                     # 1,000 held, 500 refused
    ingress.handle(encode_audio(f"s{i}", 0, block, 44100, time.time()))
assert len(ingress.streams) == 1000 and ingress.counters.refused_streams == 500
peak = rss_mb()
time.sleep(0.01)
assert ingress.expire_idle() == 1000 and not ingress.streams
after = rss_mb()
ingress.pull.close(linger=0)
ctx.term()
print(before, peak, after)
"""


def test_expired_streams_give_their_memory_back():
    # In a fresh process: after the rest of the suite, a test process reuses memory it already
    # freed, so 1,000 streams need not grow its RSS at all.
    result = subprocess.run([sys.executable, "-c", EXPIRY_SCRIPT.replace("RATE", str(RATE))],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() in ("skip", ""):
        pytest.skip("not glibc or no /proc: malloc_trim or RSS not available")
    before, peak, after = map(float, result.stdout.split())
    assert peak - before > 50, f"1,000 streams should take memory ({before:.0f} -> {peak:.0f} MB)"
    assert after - before < 0.25 * (peak - before), f"{before:.0f} -> {peak:.0f} -> {after:.0f} MB"


def test_repeated_log_lines_are_rate_limited():
    from runtime.cli import RateLimitedLog

    lines: list[str] = []
    now = [0.0]
    say = RateLimitedLog(every_s=10.0, max_keys=3, sink=lines.append, clock=lambda: now[0])
    for _ in range(1000):
        say("bad", "ignoring a bad audio message")
    assert lines == ["ignoring a bad audio message"]
    say("other", "another kind")                          # another key gets through at once
    now[0] = 11.0
    say("bad", "ignoring a bad audio message")
    assert lines[-1] == "ignoring a bad audio message (999 more like this in the last 11 s)"
    for i in range(100):                                   # hostile keys cannot grow it
        say(f"k{i}", "x")
    assert len(say._keys) == 3


def test_stats_file_in_a_missing_folder_is_one_line(export, tmp_path):
    result = run_cli("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*",
                     "--pub", "tcp://127.0.0.1:*", "--stats-file",
                     str(tmp_path / "missing" / "stats.json"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --stats-file {tmp_path / 'missing' / 'stats.json'}: its folder does not exist"]


def test_the_resolved_config_is_saved_beside_the_stats_file(export, tmp_path):
    from runtime.apps.serve import ServeConfig, stats_config_path
    from runtime.config import config_from_dict

    stats = tmp_path / "stats.json"
    cli = CLI("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*",
              "--pub", "tcp://127.0.0.1:*", "--encoding", "raw", "--max-batch", "3",
              "--stats-file", str(stats))
    try:
        cli.wait_line(f"serving on {ADDRESS}")
        cli.signal(signal.SIGTERM)
        assert cli.wait(10) == 0, cli.stderr()
    finally:
        cli.kill()
    saved = json.loads(stats_config_path(stats).read_text())
    cfg = config_from_dict(ServeConfig, saved)
    assert (cfg.model.export, cfg.publish.encoding, cfg.batching.max_batch, cfg.stats_file) \
        == (str(export), "raw", 3, str(stats))
    assert cfg.security.allow_nodes is None and cfg.max_streams > 0
