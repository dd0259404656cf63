"""Loopback by default, explicit opening with a warning, and CURVE with real keys (zmq.auth):
allowed clients get frames, unknown subscribers and capture nodes get nothing in, and a
plaintext client against a CURVE server fails with one clear line."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI, run_cli, sensitive_export, write_tone_wav

from runtime.apps.keys import make_key_pair
from runtime.errors import S2IError
from runtime.wire.client import Subscriber
from runtime.wire.protocol import encode_audio
from runtime.wire.security import ClientKeys, check_address, is_loopback

ADDRESS = r"(tcp://127\.0\.0\.1:\d+)"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return sensitive_export(tmp_path_factory)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    """server / subscribers/viewer / nodes/node-ok / strangers/{viewer,node}, made by s2i-keys."""
    root = tmp_path_factory.mktemp("keys")
    made = run_cli("s2i-keys", "server", "--dir", str(root))
    assert made.returncode == 0, made.stderr
    for name, folder in [("viewer", "subscribers"), ("node-ok", "nodes"),
                         ("stranger", "strangers")]:
        make_key_pair(name, root / folder)
    assert (root / "server.key_secret").stat().st_mode & 0o077 == 0   # secret: owner only
    again = run_cli("s2i-keys", "server", "--dir", str(root))
    assert again.returncode == 2 and "already exists" in again.stderr
    return root


def test_addresses_are_checked_and_loopback_is_recognised():
    for bad in ("tcp://127.0.0.1:99999", "tcp://127.0.0.1:0", "tcp://127.0.0.1:", "5556",
                "udp://127.0.0.1:5556", "tcp://:5556"):
        with pytest.raises(S2IError, match="address"):
            check_address(bad, "publisher")
    for good in ("tcp://127.0.0.1:5556", "tcp://0.0.0.0:*", "tcp://[::1]:5556", "ipc:///tmp/x"):
        assert check_address(good, "publisher") == good
    assert is_loopback("tcp://127.0.0.1:5556") and is_loopback("tcp://localhost:1")
    assert is_loopback("tcp://[::1]:5556") and is_loopback("ipc:///tmp/s2i")
    for open_ in ("tcp://*:5556", "tcp://0.0.0.0:5556", "tcp://eth0:5556", "tcp://10.0.0.2:1"):
        assert not is_loopback(open_)


def test_defaults_are_loopback_and_a_bad_port_is_one_line(export, tmp_path):
    def help_text(script: str) -> str:
        return " ".join(run_cli(script, "--help").stdout.split())

    serve = help_text("s2i-serve")
    assert "default: tcp://127.0.0.1:5556" in serve and "default: tcp://127.0.0.1:5555" in serve
    assert "default: tcp://127.0.0.1:5556" in help_text("s2i-stream")
    assert "default: 127.0.0.1" in help_text("s2i-view")
    assert "default: tcp://127.0.0.1:5555" in help_text("s2i-capture")
    wav = write_tone_wav(tmp_path / "tone.wav", 1.0)
    for script, args in [("s2i-serve", ["--pub", "tcp://127.0.0.1:99999"]),
                         ("s2i-serve", ["--bind", "tcp://127.0.0.1:99999"]),
                         ("s2i-stream", ["--file", str(wav), "--pub", "tcp://127.0.0.1:99999"]),
                         ("s2i-capture", ["--file", str(wav), "--connect", "tcp://h:99999"]),
                         ("s2i-view", ["--out", str(tmp_path), "--connect", "tcp://h:99999"])]:
        result = run_cli(script, *args, "--export", str(export)) if script != "s2i-capture" \
            and script != "s2i-view" else run_cli(script, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, result.stderr
        assert "port '99999'" in lines[0] and "expected 1-65535" in lines[0]
    # Security options that only make sense together are refused, one line each.
    for args, words in [(["--allow-subscribers", str(tmp_path)], "needs --curve-secret"),
                        (["--curve-secret", str(tmp_path / "none.key_secret")], "needs"),
                        ]:
        result = run_cli("s2i-stream", "--file", str(wav), "--export", str(export), *args)
        assert result.returncode == 2 and words in result.stderr, result.stderr


def test_opening_to_the_network_warns_unless_curve_is_on(export, keys, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 1.0)
    common = ["--file", str(wav), "--export", str(export), "--pub", "tcp://0.0.0.0:*"]
    plain = run_cli("s2i-stream", *common)
    assert plain.returncode == 0, plain.stderr
    assert "warning: the publisher (PUB) socket tcp://0.0.0.0:* is open to the network " \
           "without CURVE" in plain.stderr
    curve = run_cli("s2i-stream", *common, "--curve-secret", str(keys / "server.key_secret"),
                    "--allow-subscribers", str(keys / "subscribers"))
    assert curve.returncode == 0, curve.stderr
    assert "warning" not in curve.stderr


def _push(ctx: zmq.Context, address: str, keys: ClientKeys | None) -> zmq.Socket:
    push = ctx.socket(zmq.PUSH)
    if keys is not None:
        keys.apply(push)
    push.connect(address)
    return push


def test_curve_lets_in_only_allowed_keys(export, keys, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 1.8, rate=16000, channels=1)
    server = CLI("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*",
                 "--pub", "tcp://127.0.0.1:*", "--hop", "0.5",
                 "--curve-secret", str(keys / "server.key_secret"),
                 "--allow-subscribers", str(keys / "subscribers"),
                 "--allow-nodes", str(keys / "nodes"))
    ctx = zmq.Context()
    viewer = ClientKeys(keys / "subscribers" / "viewer.key_secret", keys / "server.key")
    stranger = ClientKeys(keys / "strangers" / "stranger.key_secret", keys / "server.key")
    try:
        audio, pub = server.wait_line(f"serving on {ADDRESS} -> {ADDRESS}").groups()
        # A subscriber whose key is not allowed, and one without CURVE: one line each, at once.
        with pytest.raises(S2IError, match="refused our key"):
            with Subscriber(pub, keys=stranger) as sub:
                sub.wait_ready(10)
        with pytest.raises(S2IError, match="uses CURVE encryption; give --curve-secret"):
            with Subscriber(pub) as sub:
                sub.wait_ready(10)
        with Subscriber(pub, keys=viewer) as sub:
            sub.wait_ready(20)
            # An unknown capture node: its audio never reaches a ring (no frame, no log line).
            intruder = _push(ctx, audio, stranger)
            plain = _push(ctx, audio, None)
            block = (0.5 * np.sin(np.arange(8000) / 3)).astype(np.float32)
            for seq in range(6):
                for sock, sid in ((intruder, "intruder"), (plain, "plain")):
                    try:
                        sock.send_multipart(encode_audio(sid, seq, block, 16000, time.time()),
                                            zmq.NOBLOCK)
                    except zmq.Again:
                        pass
                time.sleep(0.1)
            assert sub.receive(1.5) is None
            refused = run_cli("s2i-capture", "--file", str(wav), "--connect", audio,
                              "--stream-id", "intruder-cli", "--curve-secret",
                              str(keys / "strangers" / "stranger.key_secret"),
                              "--server-key", str(keys / "server.key"))
            lines = refused.stderr.strip().splitlines()
            assert refused.returncode == 2 and "refused our key" in lines[-1], refused.stderr
            # The allowed node gets through, and s2i-view with its key writes frames.
            out = tmp_path / "frames"
            view = CLI("s2i-view", "--connect", pub, "--out", str(out), "--count", "1",
                       "--curve-secret", str(keys / "subscribers" / "viewer.key_secret"),
                       "--server-key", str(keys / "server.key"))
            try:
                sub.info = None     # the viewer's subscription makes the server say hello
                sub.wait_ready(30)
                allowed = run_cli("s2i-capture", "--file", str(wav), "--connect", audio,
                                  "--stream-id", "node-ok", "--curve-secret",
                                  str(keys / "nodes" / "node-ok.key_secret"),
                                  "--server-key", str(keys / "server.key"))
                assert allowed.returncode == 0, allowed.stderr
                frame = sub.receive(20)
                assert frame is not None and frame.header["stream"] == "node-ok"
                assert view.wait(30) == 0, view.stderr()
            finally:
                view.kill()
            assert sorted(p.suffix for p in out.iterdir()) == [".json", ".png"]
        intruder.close(linger=0)
        plain.close(linger=0)
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr()
    finally:
        server.kill()
        ctx.destroy(linger=0)
    assert "ignoring a bad audio message" not in server.stderr()
    assert "intruder" not in server.stderr() and "plain" not in server.stderr()
    assert "warning" not in server.stderr()
