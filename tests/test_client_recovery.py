"""The project's clients after a refused CURVE handshake (issue 22): libzmq never reconnects
a socket whose handshake was refused, so a client whose key was allowed afterwards received
nothing. With retry (``Subscriber(retry=True)``, ``--retry``) they log one line, re-create the
socket with backoff and get through once the server allows them; without it they end with
one line (exit 2). Real CURVE keys, ZAP (zmq.auth) and sockets; the server re-reads its
allowed-keys folder in the test (as a restarted server would)."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI, run_cli, write_tone_wav

from runtime.apps.keys import make_key_pair
from runtime.errors import S2IError
from runtime.wire.client import Backoff, Subscriber
from runtime.wire.protocol import Publisher, decode_audio, encode_frame
from runtime.wire.security import NODES_DOMAIN, SUBSCRIBERS_DOMAIN, ClientKeys, ServerSecurity

IMAGES = np.full((1, 4, 4, 3), 50, np.uint8)


class CurveServer:
    """An XPUB (the project's Publisher) and a PULL with CURVE, refusing every client until
    ``allow`` copies a client's public key into the allowed folders and re-reads them."""

    def __init__(self, root: Path) -> None:
        make_key_pair("server", root / "server")
        self.allowed = root / "allowed"
        self.allowed.mkdir()
        self.root = root
        self.ctx = zmq.Context()
        self.security = ServerSecurity(self.ctx, root / "server" / "server.key_secret",
                                       {SUBSCRIBERS_DOMAIN: self.allowed,
                                        NODES_DOMAIN: self.allowed})
        self.publisher = Publisher(self.ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"},
                                   security=self.security)
        self.pull = self.ctx.socket(zmq.PULL)
        self.security.secure(self.pull, NODES_DOMAIN)
        self.pull.bind("tcp://127.0.0.1:*")
        self.audio = self.pull.getsockopt(zmq.LAST_ENDPOINT).decode()

    def client(self, name: str) -> ClientKeys:
        make_key_pair(name, self.root / "clients")
        return ClientKeys(self.root / "clients" / f"{name}.key_secret",
                          self.root / "server" / "server.key")

    def allow(self, name: str) -> None:
        shutil.copy(self.root / "clients" / f"{name}.key", self.allowed)
        self.security.reload()

    def publish_until(self, done, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        seq = 0
        while time.monotonic() < deadline:
            self.publisher.poll_subscriptions(20)
            self.publisher.publish(encode_frame("s2i", {"seq": seq, "stream": "after"},
                                                IMAGES, None, "raw"))
            seq += 1
            if done():
                return
        raise AssertionError(f"not done within {timeout} s")

    def close(self) -> None:
        self.publisher.close()
        self.pull.close(linger=0)
        self.security.close()
        self.ctx.destroy(linger=0)


@pytest.fixture
def server(tmp_path):
    server = CurveServer(tmp_path)
    yield server
    server.close()


def test_backoff_doubles_to_its_cap_and_resets():
    backoff = Backoff(0.5, 10.0)
    assert [backoff.take() for _ in range(7)] == [0.5, 1, 2, 4, 8, 10, 10]
    backoff.reset()
    assert backoff.take() == 0.5


def test_a_refused_subscriber_recovers_once_its_key_is_allowed(server, capsys):
    keys = server.client("viewer")
    with Subscriber(server.publisher.address, keys=keys, retry=True) as sub:
        deadline = time.monotonic() + 20
        while "refused our key" not in capsys.readouterr().err:   # logged, not raised
            assert time.monotonic() < deadline, "the refusal was never logged"
            assert sub.receive(0.2) is None
        server.allow("viewer")
        frames = []
        server.publish_until(lambda: frames.append(sub.receive(0.05)) or frames[-1] is not None)
        assert frames[-1].stream == "after" and sub.conn.retries >= 1
    err = capsys.readouterr().err
    assert "handshake with tcp://" in err and "succeeded after" in err


def test_without_retry_a_refusal_is_one_error(server):
    keys = server.client("viewer")
    with pytest.raises(S2IError, match="refused our key"):
        with Subscriber(server.publisher.address, keys=keys) as sub:
            sub.wait_ready(20)


def test_s2i_view_exits_on_a_refusal_or_retries_with_retry(server, tmp_path):
    server.client("viewer")
    args = ["--connect", server.publisher.address, "--out", str(tmp_path / "out"),
            "--count", "1", "--curve-secret", str(tmp_path / "clients" / "viewer.key_secret"),
            "--server-key", str(tmp_path / "server" / "server.key")]
    refused = run_cli("s2i-view", *args)           # it used to wait forever
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and lines[-1].startswith("error: the server at"), \
        refused.stderr
    assert "refused our key" in lines[-1] and "Traceback" not in refused.stderr
    view = CLI("s2i-view", *args, "--retry")
    try:
        view.wait_line(r"refused our key .*; retrying in 0\.5 s", timeout=30)
        server.allow("viewer")
        server.publish_until(lambda: view.process.poll() is not None)
        assert view.wait(10) == 0, view.stderr()
    finally:
        view.kill()
    assert "received 1 frames" in view.stderr()
    assert len(list((tmp_path / "out").glob("after_*.png"))) == 1


def test_s2i_capture_retries_with_retry_and_its_audio_then_arrives(server, tmp_path):
    server.client("node")
    wav = write_tone_wav(tmp_path / "tone.wav", 1.0, rate=16000, channels=1)
    capture = CLI("s2i-capture", "--file", str(wav), "--loop", "--connect", server.audio,
                  "--stream-id", "kitchen", "--retry",
                  "--curve-secret", str(tmp_path / "clients" / "node.key_secret"),
                  "--server-key", str(tmp_path / "server" / "server.key"))
    try:
        capture.wait_line(r"refused our key .*; retrying in 0\.5 s", timeout=30)
        assert not server.pull.poll(500)
        server.allow("node")
        assert server.pull.poll(40_000), capture.stderr()
        header, samples = decode_audio(server.pull.recv_multipart())
        assert header["stream"] == "kitchen" and samples.shape[1] == 1
        capture.signal(signal.SIGTERM)
        assert capture.wait(20) == 0, capture.stderr()
    finally:
        capture.kill()
    assert "succeeded after" in capture.stderr()
