"""Issue 22, server side, with a real s2i-serve process: an unexpected exception per message
costs only that message (counted, logged rate-limited) and the server keeps serving another
stream; a thread that cannot go on stops the process with exit 2 and one line (it used to
stay up serving nothing, then say "shut down cleanly"); a part over the size limit is
logged; the open-file limit is raised so idle connections cannot lock clients out."""

from __future__ import annotations

import re
import signal
import socket
import time

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI, tiny_export
from test_serve import (
    ADDRESS,
    RATE,
    GoodStream,
    assert_still_serving,
    serving_a_good_stream,
    sounds,
)

from runtime.wire.client import Subscriber
from runtime.wire.protocol import MAX_AUDIO_PAYLOAD_BYTES, encode_audio

try:
    import resource
except ImportError:
    resource = None  # type: ignore[assignment]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def serve(export, *extra: str, code: str | None = None, **kwargs) -> CLI:
    return CLI("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*", "--pub",
               "tcp://127.0.0.1:*", "--hop", "0.25", "--encoding", "raw", *extra, code=code,
               **kwargs)


BUGGY_SERVER = """
import sys
import runtime.serve.ingress as ingress
import runtime.serve.pipeline as pipeline

real_decode, real_encode = ingress.decode_audio, pipeline.Pipeline.encode

def decode_audio(parts):                  # a bug that only some messages reach
    if b'"boom"' in parts[1]:
        raise RuntimeError("injected ingress bug")
    return real_decode(parts)

def encode(self, result):
    if result.header["stream"] == "boom2":
        raise KeyError("injected encoding bug")
    return real_encode(self, result)

ingress.decode_audio, pipeline.Pipeline.encode = decode_audio, encode
from runtime.apps.serve import main
sys.exit(main(sys.argv[1:]))
"""


def test_unexpected_errors_cost_only_their_message(export):
    server = serve(export, code=BUGGY_SERVER)
    with serving_a_good_stream(server) as (audio, sub, ctx, good_stream):
        push = ctx.socket(zmq.PUSH)
        push.connect(audio)
        for seq in range(40):          # 2 s of each: a full window of boom2 to encode
            for sid in ("boom", "boom2"):
                push.send_multipart(encode_audio(sid, seq, sounds()[0][:800], RATE,
                                                 time.time(), node="bad"))
        server.wait_line("unexpected error in the audio ingress; one audio message "
                         r"dropped, serving goes on \(1 such errors so far\): "
                         "RuntimeError: injected ingress bug", timeout=20)
        server.wait_line("unexpected error in the encoding of a frame; one frame dropped",
                         timeout=20)
        assert_still_serving(sub, "good", "unexpected errors")
        # A part over the cap: libzmq drops that connection; the server says so.
        oversize = ctx.socket(zmq.PUSH)
        oversize.connect(audio)
        oversize.send_multipart([b"audio", b"{}", b"\x00" * (2 * MAX_AUDIO_PAYLOAD_BYTES)])
        server.wait_line(f"over {MAX_AUDIO_PAYLOAD_BYTES} bytes \\(ZMQ_MAXMSGSIZE\\)",
                         timeout=20)
        assert_still_serving(sub, "good", "an oversized part")
        push.close(linger=0)
        oversize.close(linger=0)
        good_stream.stop.set()
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr()
    err = server.stderr()
    assert "Traceback" not in err and "shut down cleanly" in err
    assert err.count("injected ingress bug") == 1          # 40 errors, one line (rate limit)


DYING_INGRESS = """
import sys
from runtime.serve.ingress import NetworkIngress

def expire_idle(self):
    raise RuntimeError("injected: the ingress loop cannot go on")

NetworkIngress.expire_idle = expire_idle
from runtime.apps.serve import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_thread_that_cannot_go_on_stops_the_server_with_one_line(export):
    """Was: the ingress thread died, the process stayed up serving nothing (a zombie) and
    SIGTERM printed "shut down cleanly", exit 0."""
    server = serve(export, code=DYING_INGRESS)
    try:
        server.wait_line(f"serving on {ADDRESS}")
        code = server.wait(30)
    finally:
        server.kill()
    err = server.stderr()
    assert code == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1] == (
        "error: the ingress thread stopped after an unexpected error and the server cannot go "
        "on: RuntimeError: injected: the ingress loop cannot go on")
    assert "shut down cleanly" not in err


LOW_SOFT_LIMIT = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
from runtime.apps.serve import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(resource is None or not 1024 <= resource.getrlimit(
    resource.RLIMIT_NOFILE)[1] < 10**7, reason="needs a hard open-file limit of 1,024+")
def test_idle_connections_under_a_low_soft_limit_do_not_lock_clients_out(export):
    """300 idle TCP connections under a 256 open-file soft limit blocked every new client:
    the server now raises its soft limit to the hard one at start."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    server = serve(export, code=LOW_SOFT_LIMIT)
    idle: list[socket.socket] = []
    good_stream = None
    try:
        audio, pub = server.wait_line(f"serving on {ADDRESS} -> {ADDRESS}").groups()
        limits = open(f"/proc/{server.process.pid}/limits").read()
        soft = int(re.search(r"Max open files\s+(\d+)", limits).group(1))
        assert soft == hard, limits
        port = int(audio.rsplit(":", 1)[1])
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", port)))
        with Subscriber(pub) as sub:
            sub.wait_ready(20)
            good_stream = GoodStream(audio, "late-client")
            good_stream.start()
            assert_still_serving(sub, "late-client", "300 idle connections", within=15)
        good_stream.stop.set()
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr()
    finally:
        if good_stream is not None:
            good_stream.stop.set()
        for conn in idle:
            conn.close()
        server.kill()
    assert "Traceback" not in server.stderr()


def test_position_s_of_a_served_stream_is_on_the_hop_grid(export):
    """The same rule through the real server: a 44.1-kHz capture node's frames."""
    server = serve(export)
    ctx = zmq.Context()
    try:
        audio, pub = server.wait_line(f"serving on {ADDRESS} -> {ADDRESS}").groups()
        with Subscriber(pub) as sub:
            sub.wait_ready(20)
            push = ctx.socket(zmq.PUSH)
            push.connect(audio)
            block = (0.3 * np.sin(np.arange(2205) / 4)).astype(np.float32)
            for seq in range(40):                 # 2 s at 44.1 kHz, 4x real time
                push.send_multipart(encode_audio("r", seq, block, 44100, time.time()))
                time.sleep(0.0125)
            positions = []
            while (frame := sub.receive(3.0)) is not None:
                if frame.header["stream"] == "r":
                    positions.append(frame.header["position_s"])
            push.close(linger=0)
        server.signal(signal.SIGTERM)
        server.wait(20)
    finally:
        ctx.destroy(linger=0)
        server.kill()
    assert len(positions) >= 2 and positions[-1] >= 1.5, positions
    assert all(((p - 1.0) / 0.25).is_integer() for p in positions), positions


FD_STARVED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (160, 160))
from runtime.apps.serve import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(resource is None, reason="needs the resource module (POSIX)")
def test_running_out_of_file_descriptors_is_logged(export):
    """ZeroMQ has no per-socket connection limit: past the open-file limit, accepts fail
    (EMFILE) and new clients wait; the server now says so instead of nothing."""
    server = serve(export, code=FD_STARVED)
    idle: list[socket.socket] = []
    try:
        audio = server.wait_line(f"serving on {ADDRESS}").group(1)
        port = int(audio.rsplit(":", 1)[1])
        for _ in range(200):
            try:      # past the limit and a full backlog the kernel drops or refuses
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:          # (which one depends on its settings): enough either way
                break
        assert len(idle) >= 100, f"only {len(idle)} connections: {server.stderr()}"
        server.wait_line(r"cannot accept a connection on the audio input \(PULL\) socket "
                         r"\(\d+ so far\): Too many open files \(open-file limit 160\)",
                         timeout=20)
        for conn in idle:
            conn.close()
        idle.clear()
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr()
    finally:
        for conn in idle:
            conn.close()
        server.kill()
    assert "Traceback" not in server.stderr()
