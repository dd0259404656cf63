"""s2i-serve --workers N (issue 21, part 3): real server processes, real sockets, the tiny
input-sensitive export. Several streams on both workers each keep their order and get their
own images (those the one-process pipeline computes for the same audio and masks); a worker
killed mid-run is logged, started again and its stream goes on (seq rising) while the other
worker's stream never stops; SIGTERM ends every process; bad messages cost only themselves;
workers that keep dying stop the server with one line."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI, tiny_export
from hypothesis import given, settings
from hypothesis import strategies as st
from test_serve import (
    ADDRESS,
    RATE,
    GoodStream,
    assert_still_serving,
    hostile_messages,
    serving_a_good_stream,
    sounds,
)

from runtime.serve.workers import route, worker_of
from runtime.wire.client import Subscriber
from runtime.wire.protocol import encode_audio

# The parent with dropout masks of ones: every image is then a function of its window alone.
ONES_MASKS = """
import sys
import numpy as np
import runtime.serve.pipeline as pipeline
pipeline.draw_masks = lambda dropout, rows, rng: [
    np.ones((rows, int(d["channels"])), np.float32) for d in dropout]
from runtime.apps.serve import main
sys.exit(main(sys.argv[1:]))
"""

# Workers that cannot start (their config file does not exist).
DYING_WORKERS = """
import sys
import runtime.serve.workers as workers
real = workers.WorkerProcesses.start
def start(self, index):
    self.config = "/nonexistent/s2i-worker-config.json"
    real(self, index)
workers.WorkerProcesses.start = start
from runtime.apps.serve import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def common(export: Path, *extra: str) -> list[str]:
    return ["--export", str(export), "--bind", "tcp://127.0.0.1:*", "--pub",
            "tcp://127.0.0.1:*", "--workers", "2", "--encoding", "raw", "--features", "host",
            *extra]


def ids_on_both_workers(per_worker: int) -> list[str]:
    chosen: dict[int, list[str]] = {0: [], 1: []}
    for i in range(100):
        sid = f"mic-{i}"
        if len(chosen[worker_of(sid, 2)]) < per_worker:
            chosen[worker_of(sid, 2)].append(sid)
    return chosen[0] + chosen[1]


def worker_pids(server: CLI) -> dict[int, int]:
    """Each worker's newest pid, from the parent's log."""
    server.stderr()
    return {int(m.group(1)): int(m.group(2)) for line in server.lines
            if (m := re.search(r"worker (\d+) started \(pid (\d+)\)", line))}


def test_streams_on_both_workers_keep_their_order_and_their_own_images(export):
    from runtime.model.backends import open_translator
    from runtime.serve.pipeline import Pipeline, Window

    streams = ids_on_both_workers(2)
    audio = dict(zip(streams, sounds(), strict=True))
    pipeline = Pipeline(open_translator(export, backend="onnxruntime-cpu", features="host"))
    ones = [np.ones((1, int(d["channels"])), np.float32) for d in pipeline.dropout]
    expected = {sid: pipeline.process_batch([Window(sid, a, 0.0)], ones)[0].images[0]
                for sid, a in audio.items()}
    server = CLI("s2i-serve", *common(export), code=ONES_MASKS)
    frames = []
    try:
        address, pub = server.wait_line(f"serving on {ADDRESS} -> {ADDRESS}", 120).groups()
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
        push.connect(address)
        with Subscriber(pub) as sub:
            hello = sub.wait_ready(20)
            block = RATE // 20
            start = time.monotonic()
            for seq in range(70):                   # 3.5 s: windows end at 1, 2 and 3 s
                for sid, sound in audio.items():
                    push.send_multipart(encode_audio(
                        sid, seq, sound[(seq * block) % RATE:][:block], RATE, time.time()))
                time.sleep(max(0.0, start + (seq + 1) * 0.05 - time.monotonic()))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and len(frames) < 3 * len(streams):
                if (frame := sub.receive(0.5)) is not None:
                    frames.append(frame)
        push.close(linger=0)
        ctx.term()
    finally:
        server.kill()
    assert {f.session for f in frames} == {hello["session"]}, "one server, one session"
    for sid in streams:
        mine = [f for f in frames if f.stream == sid]
        assert len(mine) >= 2, (sid, server.stderr())
        assert [f.seq for f in mine] == list(range(len(mine))), sid
        positions = [f.header["position_s"] for f in mine]
        assert positions == sorted(set(positions)) and all(p % 1.0 == 0 for p in positions)
        for f in mine:      # its own sound's image, as one process computes it
            diff = np.abs(f.images[0].astype(int) - expected[sid].astype(int)).max()
            assert diff <= 1, f"{sid} seq {f.seq}: {diff} grey levels from its own image"
    assert max(f.header["batch"] for f in frames) > 1, "no batch mixed streams"
    # The export is input-sensitive: another stream's image would not have passed.
    first, *others = streams
    assert all(np.abs(expected[first].astype(int) - expected[s].astype(int)).max() > 1
               for s in others)


def test_a_killed_worker_is_restarted_and_sigterm_ends_every_process(export):
    server = CLI("s2i-serve", *common(export, "--hop", "0.25"))
    other = None
    with serving_a_good_stream(server) as (audio_address, sub, _ctx, good_stream):
        owner = worker_of("good", 2)
        other_id = next(s for s in ids_on_both_workers(1) if worker_of(s, 2) != owner)
        other = GoodStream(audio_address, other_id)
        other.start()
        assert_still_serving(sub, other_id, "starting", within=10)
        pid = worker_pids(server)[owner]
        seen_before = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(seen_before) < 2:
            frame = sub.receive(0.5)
            if frame is not None and frame.stream == "good":
                seen_before.append(frame.seq)
        assert seen_before, server.stderr()
        os.kill(pid, signal.SIGKILL)
        server.wait_line(rf"worker {owner} \(pid {pid}\) died \(killed by signal 9\); "
                         "starting it again", 20)
        assert_still_serving(sub, other_id, "the other worker was killed", within=5)
        killed_at, after = time.time(), []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not after:
            frame = sub.receive(0.5)
            if frame is not None and frame.stream == "good" \
                    and frame.header["capture_time"] > killed_at:
                after.append(frame)
        assert after, "the killed worker's stream never came back:\n" + server.stderr()
        assert after[0].seq > max(seen_before), "its seq went back after the restart"
        assert after[0].header["position_s"] >= 1.0
        pids = list(worker_pids(server).values())
        assert pid not in pids and len(pids) == 2
        good_stream.stop.set()
        other.stop.set()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr()
        took = time.monotonic() - started
        assert took < 10.0, f"SIGTERM took {took:.1f} s (workers are killed 0.8 s after it)"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_running(p) for p in pids):
            time.sleep(0.1)
        assert not any(_running(p) for p in pids), "a worker outlived its parent"
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and {"good", other_id} - set(sub.ended):
            sub.receive(0.2)
        assert sub.ended.get("good", {}).get("reason") == "server-stopped", server.stderr()
    err = server.stderr()
    assert "Traceback" not in err and "shut down cleanly" in err
    assert err.count("died (killed by signal 9)") == 1


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_bad_messages_cost_only_themselves_with_workers(export):
    server = CLI("s2i-serve", *common(export, "--hop", "0.25", "--max-streams", "16"))
    with serving_a_good_stream(server) as (audio_address, sub, ctx, _good_stream):
        hostile = ctx.socket(zmq.PUSH)
        hostile.connect(audio_address)
        good = encode_audio("other", 0, np.zeros(800, np.float32), RATE, time.time())
        garbage = {
            "wrong part counts and topics": [[b"audio"], [b"x", b"y", b"z"],
                                             [b"audio", good[1], good[2], b"extra", b"more"]],
            "headers that are not a JSON object or a string stream id": [
                [b"audio", b"{not json", good[2]], [b"audio", b'["a list"]', good[2]],
                [b"audio", b'{"stream": 5}', good[2]], [b"audio", b"\xff\xfe", good[2]]],
            **hostile_messages(good),
        }
        for what, messages in garbage.items():
            for parts in messages:
                hostile.send_multipart(parts)
            assert_still_serving(sub, "good", what, within=5)
        hostile.close(linger=0)
    err = server.stderr()
    assert "Traceback" not in err
    assert "ignoring a bad audio message" in err and "refusing new stream" in err


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=5), st.integers(1, 8))
def test_routing_never_raises(parts, workers):
    assert 0 <= route(parts, workers) < workers
    header = encode_audio("x" * (len(parts) + 1), 0, np.zeros(1, np.float32), RATE, 0.0)
    assert route(header, workers) == worker_of("x" * (len(parts) + 1), workers)


def test_workers_that_keep_dying_stop_the_server(export):
    server = CLI("s2i-serve", *common(export), code=DYING_WORKERS)
    try:
        assert server.wait(120) == 2, server.stderr()
    finally:
        server.kill()
    err = server.stderr()
    assert "Traceback" not in err
    assert re.search(r"error: worker \d \(pid \d+\) died \(exit code 2\): 3 worker deaths "
                     r"within 10 s; stopping the server", err), err
