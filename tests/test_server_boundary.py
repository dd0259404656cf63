"""Issue 22, server side: nothing but a one-line S2IError escapes the server's boundary.

Audio headers are checked with the types of docs/PROTOCOL.md (any JSON is one line); the
minimal end message ends its stream; a duplicate seq is dropped, never a reset; position_s is
on the hop grid; repeated refusals are rate-limited; the receive queue is bounded in bytes;
key files are checked; Ctrl-C while a console script imports is one line. The server-process
tests (unexpected errors survived, a thread that cannot go on, oversize parts, the open-file
limit) are in test_server_resilience.py; the Hypothesis fuzz tests in test_server_fuzz.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from runtime.apps.keys import make_key_pair
from runtime.errors import S2IError
from runtime.serve.ingress import PULL_RCVHWM, NetworkIngress
from runtime.wire.protocol import MAX_AUDIO_PAYLOAD_BYTES, decode_audio, encode_audio
from runtime.wire.security import NODES_DOMAIN, ServerSecurity, load_secret

RATE = 16000
BLOCK = np.zeros(800, np.float32)


def message(**changes) -> list[bytes]:
    good = encode_audio("mic", 3, BLOCK, RATE, 12.5, node="n1")
    header = {k: v for k, v in dict(json.loads(good[1]), **changes).items() if v is not ...}
    payload = b"" if header.get("end") is True else good[2]
    return [good[0], json.dumps(header).encode(), payload]


@pytest.mark.parametrize("changes, words", [
    ({"dtype": []}, "dtype should be one of"),                     # was TypeError
    ({"dtype": {}}, "dtype should be one of"),                     # was TypeError
    ({"sample_rate": 16000.0}, "'sample_rate' should be an integer"),
    ({"channels": 1.0}, "'channels' should be an integer"),
    ({"channels": True}, "'channels' should be an integer"),
    ({"seq": 5.0}, "'seq' should be an integer"),
    ({"seq": 2**53 + 1}, "'seq' should be an integer in \\[0, 9007199254740992\\]"),
    ({"kind": "Audio"}, "'kind' should be \"audio\""),
    ({"kind": ...}, "'kind' should be \"audio\""),
    ({"protocol": 2.0}, "has protocol 2.0"),
    ({"protocol": True}, "has protocol True"),
    ({"capture_time": "1"}, "'capture_time' should be a finite number"),
    ({"capture_time": True}, "'capture_time' should be a finite number"),
    ({"end": 1}, "'end' should be true or false"),
    ({"end": "yes"}, "'end' should be true or false"),
    ({"stream": ["a"]}, "'stream' should be 1-64 characters"),
])
def test_every_mistyped_audio_header_is_one_line(changes, words):
    with pytest.raises(S2IError, match=words) as info:
        decode_audio(message(**changes))
    assert "\n" not in str(info.value)


def test_non_json_constants_and_odd_parts_are_one_line():
    good = message()
    for text in (b'{"kind": "audio", "seq": NaN}', b'{"capture_time": Infinity}',
                 b'{"a": -Infinity}', b"1" * 2000, b"\xff\xfe", b"[" * 2000):
        with pytest.raises(S2IError, match="not strict JSON|should be a JSON object"):
            decode_audio([good[0], text, good[2]])
    for parts in ([], [b"audio"], (b"audio", good[1], good[2]), [b"audio", good[1], b"", b""]):
        with pytest.raises(S2IError, match="not an S2I audio message"):
            decode_audio(parts)            # type: ignore[arg-type]
    with pytest.raises(S2IError, match="end message should have an empty payload"):
        decode_audio([good[0], json.dumps(dict(json.loads(good[1]), end=True)).encode(),
                      good[2]])


def test_the_payload_cap_is_under_the_socket_part_limit():
    """Every message decode_audio accepts passes ZMQ_MAXMSGSIZE (issue: a valid 2-s message
    of many channels was over the undocumented 4 MiB part limit and lost its connection)."""
    worst = message(sample_rate=192000, channels=32)
    too_big = [worst[0], worst[1], b"\x00" * (MAX_AUDIO_PAYLOAD_BYTES + 128)]
    with pytest.raises(S2IError, match="over the cap"):
        decode_audio(too_big)
    frames = MAX_AUDIO_PAYLOAD_BYTES // (32 * 4)
    header, samples = decode_audio([worst[0], worst[1], b"\x00" * (frames * 32 * 4)])
    assert samples.shape == (frames, 32)
    ctx = zmq.Context()
    ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", RATE, RATE, RATE // 4)
    try:
        assert ingress.pull.getsockopt(zmq.MAXMSGSIZE) == MAX_AUDIO_PAYLOAD_BYTES
        # Bounded in bytes per connection: the receive queue holds at most 16 MiB.
        assert ingress.pull.getsockopt(zmq.RCVHWM) * MAX_AUDIO_PAYLOAD_BYTES <= 16 * 2**20
    finally:
        ingress.pull.close(linger=0)
        ctx.term()


class Lines(list):
    def __call__(self, line: str) -> None:
        self.append(line)


def ingress_with_log(ctx: zmq.Context, **kwargs) -> tuple[NetworkIngress, Lines, list]:
    from runtime.cli import RateLimitedLog

    ends: list[tuple[str, str]] = []
    ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", RATE, RATE, RATE // 4,
                             on_end=lambda sid, reason: ends.append((sid, reason)), **kwargs)
    lines = Lines()
    ingress.say = RateLimitedLog(sink=lines)
    return ingress, lines, ends


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def test_the_minimal_end_message_ends_the_stream_and_others_are_told(ctx):
    ingress, lines, ends = ingress_with_log(ctx)
    assert ingress.handle(encode_audio("a", 0, BLOCK, RATE, 1.0, node="n1")) == "a"
    bad_end = message(stream="a", end=1)
    assert ingress.handle(bad_end) is None and ingress.counters.bad_messages == 1
    assert any("'end' should be true or false" in line for line in lines)
    stranger = {"kind": "audio", "protocol": 2, "stream": "a", "node": "n2", "end": True}
    assert ingress.handle([b"audio", json.dumps(stranger).encode(), b""]) is None
    assert "ignoring the end of stream 'a' from node n2: node n1 sends it" in lines[-1]
    minimal = {"kind": "audio", "protocol": 2, "stream": "a", "node": "n1", "end": True}
    assert ingress.handle([b"audio", json.dumps(minimal).encode(), b""]) == "a"
    assert ends == [("a", "node-stopped")] and not ingress.streams


def test_a_duplicate_seq_is_dropped_and_never_resets_the_stream(ctx):
    """Protocol-1 nodes sharing an id, or a hostile seq 0 every 0.5 s, used to reset the
    stream's buffer each time: it never reached a window (a stall)."""
    ingress, lines, _ = ingress_with_log(ctx, takeover_s=0.3)
    v1 = {"kind": "audio", "protocol": 1, "stream": "s", "sample_rate": RATE, "channels": 1,
          "dtype": "float32", "capture_time": 1.0}

    def v1_message(seq: int) -> list[bytes]:      # protocol 1: no node id
        return [b"audio", json.dumps(dict(v1, seq=seq)).encode(), BLOCK.tobytes()]

    for seq in range(30):                          # 1.5 s of audio, a hostile seq 0 between
        assert ingress.handle(v1_message(seq + 100)) == "s"
        assert ingress.handle(v1_message(seq % 3)) is None
    state = ingress.streams["s"]
    assert state.ring.written == 30 * 800 and ingress.counters.restarts == 0
    assert ingress.counters.stale_seq == 30 and "s" in ingress.scheduler.due
    assert len(ingress.take(4, 0.0, _never())) == 1
    time.sleep(0.35)                               # silent past takeover_s: a restart
    assert ingress.handle(v1_message(0)) == "s"
    assert ingress.counters.restarts == 1 and ingress.streams["s"].ring.written == 800
    assert sum("restarted" in line for line in lines) == 1


def _never():
    import threading

    return threading.Event()


def test_thousands_of_node_ids_on_a_live_stream_give_one_line(ctx):
    ingress, lines, _ = ingress_with_log(ctx)
    assert ingress.handle(encode_audio("live", 0, BLOCK, RATE, 1.0, node="owner")) == "live"
    for i in range(5000):
        if i % 50 == 0:                            # the owner stays live
            ingress.handle(encode_audio("live", 1 + i, BLOCK, RATE, 1.0, node="owner"))
        assert ingress.handle(encode_audio("live", 1, BLOCK, RATE, 1.0, node=f"n{i}")) is None
    assert ingress.counters.refused_duplicates == 5000
    assert sum("refusing audio for stream 'live'" in line for line in lines) == 1


def test_position_s_is_on_the_hop_grid_with_resampled_input(ctx):
    """44.1-kHz blocks of 50 ms do not fall on the 16-kHz hop grid: position_s used to be
    the samples written so far, so a skipped hop could not be seen in it."""
    ingress, _, _ = ingress_with_log(ctx)
    hop, window = RATE // 4, RATE
    block = (0.1 * np.sin(np.arange(2205) / 5)).astype(np.float32)
    positions = []
    for seq in range(80):                          # 4 s; take a window now and then
        ingress.handle(encode_audio("r", seq, block, 44100, 1.0 + seq / 20, node="n"))
        if seq % 7 == 6 and ingress.scheduler.due:
            positions += [w.position_s for w in ingress.take(4, 0.0, _never())]
    assert len(positions) >= 8 and positions == sorted(set(positions))
    for position in positions:
        steps = (position * RATE - window) / hop
        assert steps == int(steps), position       # window + n hops, exactly
    assert ingress.counters.skipped > 0            # some hops were skipped, and it shows:
    assert max(np.diff(positions)) > hop / RATE


def test_the_window_is_the_audio_that_ends_at_position_s(ctx):
    """Blocks of 700 samples do not fall on the 4,000-sample hop grid: the window taken is
    still the one that ends at position_s, sample for sample."""
    ingress, _, _ = ingress_with_log(ctx)
    ramp = (np.arange(4 * RATE) * 1e-5).astype(np.float32)
    taken = []
    for seq, start in enumerate(range(0, len(ramp), 700)):
        ingress.handle(encode_audio("ramp", seq, ramp[start:start + 700], RATE, 1.0, node="n"))
        if seq % 9 == 8 and ingress.scheduler.due:
            taken += ingress.take(4, 0.0, _never())
    assert len(taken) >= 5
    for window in taken:
        end = round(window.position_s * RATE)
        assert (end - RATE) % (RATE // 4) == 0
        np.testing.assert_array_equal(window.audio, ramp[end - RATE:end])


RECEIVER = """
import sys, time
import zmq
from runtime.serve.ingress import NetworkIngress

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

ctx = zmq.Context()
ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", 16000, 16000, 4000)
print(ingress.address, rss_mb(), flush=True)
sys.stdin.readline()              # the sender is done: nobody ever read the socket
print(rss_mb(), flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for RSS")
def test_an_unread_receive_queue_is_bounded_in_bytes():
    """400 valid 4-MiB messages took the server to 703 MB (RCVHWM 1000 x 4 MiB): now a
    connection queues at most RCVHWM x the payload cap, whatever the peer sends."""
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    try:
        address, before = receiver.stdout.readline().split()
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.SNDHWM, 200)
        push.connect(address)
        frames = MAX_AUDIO_PAYLOAD_BYTES // 8
        big = encode_audio("flood", 0, np.zeros((frames, 2), np.float32), 48000, 1.0,
                           channels=2)
        assert len(big[2]) <= MAX_AUDIO_PAYLOAD_BYTES
        sent = 0
        for _ in range(100):
            try:
                push.send_multipart(big, zmq.NOBLOCK, copy=False)
                sent += 1
            except zmq.Again:
                break
        time.sleep(2.0)                             # let libzmq move what it can
        receiver.stdin.write("done\n")
        receiver.stdin.flush()
        after = float(receiver.stdout.readline())
        push.close(linger=0)
    finally:
        receiver.kill()
        receiver.wait()
        ctx.destroy(linger=0)
    grown = after - float(before)
    # RCVHWM x the cap (16 MiB) plus TCP and decoder buffers; was 100 x 4 MiB.
    assert PULL_RCVHWM * MAX_AUDIO_PAYLOAD_BYTES <= 16 * 2**20
    assert sent == 100 and grown < 64, f"{sent} sent, receiver grew {grown:.0f} MB"


# --- key files ------------------------------------------------------------------------------

def test_key_files_are_checked_with_one_line(tmp_path):
    public, secret = make_key_pair("server", tmp_path)
    text = secret.read_text()
    short = tmp_path / "short.key_secret"
    key = text.split('secret-key = "')[1][:40]
    short.write_text(text.replace(key, key[:30]))
    short.chmod(0o600)
    with pytest.raises(S2IError, match="secret key should be 40 Z85 characters, got 30"):
        load_secret(short, "server secret")             # was a traceback in ZeroMQ
    secret.chmod(0o644)
    with pytest.raises(S2IError, match=f"readable by other users .*chmod 600 {secret}"):
        load_secret(secret, "server secret")
    secret.chmod(0o600)
    assert load_secret(secret, "server secret")[1] == key.encode()


def test_a_broken_key_file_costs_only_itself(tmp_path, capsys):
    """One broken .key in an allowed folder used to refuse every client."""
    make_key_pair("server", tmp_path)
    _, node_secret = make_key_pair("node", tmp_path / "nodes")
    (tmp_path / "nodes" / "broken.key").write_text("this is not a certificate\n")
    ctx = zmq.Context()
    security = ServerSecurity(ctx, tmp_path / "server.key_secret",
                              {NODES_DOMAIN: tmp_path / "nodes"})
    try:
        assert f"skipping {tmp_path / 'nodes' / 'broken.key'}" in capsys.readouterr().err
        pull = ctx.socket(zmq.PULL)
        security.secure(pull, NODES_DOMAIN)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        from runtime.wire.security import ClientKeys

        push = ctx.socket(zmq.PUSH)
        ClientKeys(node_secret, tmp_path / "server.key").apply(push)
        push.connect(f"tcp://127.0.0.1:{port}")
        push.send(b"hello")
        assert pull.poll(10000), "the allowed node was refused"
        assert pull.recv() == b"hello"
        push.close(linger=0)
        pull.close(linger=0)
    finally:
        security.close()
        ctx.destroy(linger=0)


def test_a_server_key_of_the_wrong_length_is_one_line_from_s2i_serve(tmp_path,
                                                                     tmp_path_factory):
    from helpers_runtime import run_cli, tiny_export

    make_key_pair("server", tmp_path)
    secret = tmp_path / "server.key_secret"
    text = secret.read_text()
    key = text.split('secret-key = "')[1][:40]
    secret.write_text(text.replace(key, key + "abcde"))
    (tmp_path / "subs").mkdir()
    result = run_cli("s2i-serve", "--export", str(tiny_export(tmp_path_factory)),
                     "--curve-secret", str(secret), "--allow-subscribers",
                     str(tmp_path / "subs"), "--allow-nodes", str(tmp_path / "subs"))
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: server secret key file {secret}: its secret key should be 40 Z85 "
        "characters, got 45 characters (make key pairs with s2i-keys)")


# --- Ctrl-C while a console script starts ----------------------------------------------------

def test_ctrl_c_while_a_console_script_imports_is_one_line(tmp_path):
    (tmp_path / "slow_to_import.py").write_text("raise KeyboardInterrupt\n")
    code = textwrap.dedent("""
        import sys
        from runtime.apps.entry import _run
        sys.exit(_run("slow_to_import"))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(tmp_path)), timeout=60)
    assert result.returncode == 130 and result.stderr.strip() == "interrupted", result.stderr
    scripts = Path(__file__).resolve().parents[1] / "pyproject.toml"
    assert 's2i-serve = "runtime.apps.entry:serve"' in scripts.read_text()
