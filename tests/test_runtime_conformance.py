"""Conformance: a subscriber written from docs/PROTOCOL.md alone (raw pyzmq, json, Pillow; no
``runtime`` import) checks every documented field and rule against live ``s2i-stream``
servers: hello, frames, PNG colour types, the uncertainty formula, rms/peak on sanitised audio,
strict JSON, position_s on the hop grid, the end message, topic prefix matching, and a server
restart on the same port (a new session, seq from 0)."""

from __future__ import annotations

import io
import json
import math
import re
import socket
import struct
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf
import zmq
from helpers_runtime import CLI, sensitive_export
from PIL import Image

TOPIC = b"s2i"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return sensitive_export(tmp_path_factory)     # make_tiny_export(..., input_sensitive=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def strict(data: bytes) -> dict:
    """RFC 8259 JSON only: NaN/Infinity are a failure, and the header is an object."""
    def refuse(name: str):
        raise AssertionError(f"header has the non-standard JSON constant {name}")
    header = json.loads(data.decode("utf-8"), parse_constant=refuse)
    assert isinstance(header, dict)
    return header


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_float(v) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def png_ihdr(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


def check_hello(h: dict) -> None:
    assert h["kind"] == "hello" and h["protocol"] == 2 and h["topic"] == "s2i"
    assert isinstance(h["session"], str) and re.fullmatch(r"[0-9a-f]{16}", h["session"])
    assert is_float(h["time"]) and abs(h["time"] - time.time()) < 60
    assert isinstance(h["backend"], str)
    assert isinstance(h["classes"], list) and all(isinstance(c, str) for c in h["classes"])
    assert is_int(h["samples"]) and h["samples"] >= 1
    assert h["shape"] == [96, 96, 3] and h["encoding"] in ("png", "raw")
    assert isinstance(h["uncertainty"], bool)
    if h["uncertainty"]:
        assert h["uncertainty_shape"] == [96, 96] and h["uncertainty_scale"] == 0.5
    else:
        assert h["uncertainty_shape"] is None and h["uncertainty_scale"] is None
    assert is_float(h["window_s"]) and is_float(h["hop_s"]) and is_int(h["sample_rate"])


def check_frame(parts: list[bytes], h: dict, hello: dict) -> tuple[list, np.ndarray | None]:
    """Every documented frame field and payload rule; returns the decoded images and map."""
    assert h["kind"] == "frame" and h["protocol"] == 2 and h["session"] == hello["session"]
    assert isinstance(h["stream"], str) and is_int(h["seq"]) and h["seq"] >= 0
    assert is_float(h["capture_time"]) and is_float(h["publish_time"])
    assert h["publish_time"] >= h["capture_time"] - 1
    assert h["position_s"] is None or is_float(h["position_s"])
    for key in ("window_s", "hop_s", "sample_rate", "samples", "shape", "encoding",
                "uncertainty", "uncertainty_shape", "uncertainty_scale", "backend"):
        assert h[key] == hello[key], key
    assert is_int(h["batch"]) and h["batch"] >= 1
    assert is_float(h["rms"]) and is_float(h["peak"]) and 0 <= h["rms"] <= h["peak"] <= 1
    assert set(h["timings_ms"]) == {"features", "encoder", "generator", "encoding"}
    assert all(is_float(v) and v >= 0 for v in h["timings_ms"].values())
    k = h["samples"]
    assert len(parts) == 2 + k + (1 if h["uncertainty"] else 0)
    height, width, _ = h["shape"]
    images = []
    for payload in parts[2:2 + k]:
        assert png_ihdr(payload) == (width, height, 8, 2)          # 8-bit RGB
        image = Image.open(io.BytesIO(payload))
        assert image.mode == "RGB"
        images.append(np.asarray(image))
    unc = None
    if h["uncertainty"]:
        assert png_ihdr(parts[2 + k]) == (width, height, 8, 0)     # 8-bit greyscale
        unc = np.asarray(Image.open(io.BytesIO(parts[2 + k])))
        assert unc.shape == tuple(h["uncertainty_shape"])
    return images, unc


def receive_stream(sub: zmq.Socket, stream: str, timeout: float = 60) -> dict:
    """hellos, frames (parts, header) and the end of ``stream``, all headers strict JSON."""
    got = {"hellos": [], "frames": [], "end": None}
    deadline = time.monotonic() + timeout
    while got["end"] is None:
        assert time.monotonic() < deadline, f"no end of {stream}: {got['hellos']}"
        if not sub.poll(500):
            continue
        parts = sub.recv_multipart()
        assert parts[0] == TOPIC
        h = strict(parts[1])
        if h["kind"] == "hello":
            assert len(parts) == 2
            got["hellos"].append(h)
        elif h["kind"] == "frame" and h["stream"] == stream:
            got["frames"].append((parts, h))
        elif h["kind"] == "end" and h["stream"] == stream:
            assert len(parts) == 2
            got["end"] = h
    return got


def test_a_client_written_from_the_page_alone(export, tmp_path):
    rate, hop, seconds = 16000, 0.5, 2.2
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.4 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2 * t)) / 1.5)
    wav = tmp_path / "tone.wav"
    sf.write(wav, tone.astype(np.float32), rate, subtype="FLOAT")
    audio = sf.read(wav, dtype="float32")[0]
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.connect(address)
    sub.setsockopt(zmq.SUBSCRIBE, TOPIC)
    prefix = ctx.socket(zmq.SUB)                  # prefix matching: "s" receives "s2i"
    prefix.connect(address)
    prefix.setsockopt(zmq.SUBSCRIBE, b"s")
    servers = []
    try:
        # --- first server: a file, K = 2 with the uncertainty map ---------------------------
        first = CLI("s2i-stream", "--file", str(wav), "--export", str(export), "--hop",
                    str(hop), "--samples", "2", "--uncertainty", "--pub", address,
                    "--wait-subscribers", "2", "--stream-id", "conf")
        servers.append(first)
        got = receive_stream(sub, "conf")
        assert first.wait(30) == 0, first.stderr()
        hello = got["hellos"][0]
        check_hello(hello)
        assert hello["samples"] == 2 and hello["uncertainty"] is True
        assert hello["window_s"] == 1.0 and hello["hop_s"] == hop and hello["sample_rate"] == rate
        frames = got["frames"]
        assert [h["seq"] for _, h in frames] == list(range(len(frames))) and len(frames) == 3
        differ = []
        for i, (parts, h) in enumerate(frames):
            images, unc = check_frame(parts, h, hello)
            # position_s: a file without --realtime is on the hop grid.
            assert h["position_s"] == pytest.approx(1.0 + i * hop)
            # rms/peak: on the window of the sanitised mono audio ending at position_s.
            end = int(round(h["position_s"] * rate))
            window = np.clip(np.nan_to_num(audio[end - rate:end]), -1, 1).astype(np.float64)
            assert h["rms"] == pytest.approx(np.sqrt(np.mean(window ** 2)), abs=1e-4)
            assert h["peak"] == pytest.approx(np.abs(window).max(), abs=1e-4)
            # The uncertainty formula: population std over K of [0, 1] images, mean of RGB.
            unit = np.stack(images).astype(np.float64) / 255
            std = unit.std(axis=0, ddof=0).mean(axis=2)
            assert np.abs(unc / 255 * h["uncertainty_scale"] - std).max() <= 0.004
            differ.append(not np.array_equal(images[0], images[1]))
            assert abs(h["capture_time"] - time.time()) < 120
        assert all(differ)                           # MC dropout: the K samples differ
        # Input-sensitive model: windows of different audio give different images.
        firsts = [np.asarray(Image.open(io.BytesIO(p[2])), np.int16) for p, _ in frames]
        assert np.abs(firsts[0] - firsts[2]).mean() > 1.0
        end = got["end"]
        assert end["protocol"] == 2 and end["session"] == hello["session"]
        assert end["reason"] == "end-of-file" and end["last_seq"] == frames[-1][1]["seq"]
        assert is_float(end["time"])
        seen = []                                    # the prefix subscriber got them too
        while prefix.poll(200):
            seen.append(prefix.recv_multipart()[0])
        assert seen and set(seen) == {TOPIC}

        # --- restart on the same port: a new session, seq from 0; hostile raw audio ---------
        hostile = (0.3 * np.sin(np.arange(int(1.6 * rate)) / 5)).astype("<f4")
        hostile[::50], hostile[1::50], hostile[2::50] = np.nan, 1e17, -np.inf
        second = CLI("s2i-stream", "--stdin", "--format", "f32", "--rate", str(rate),
                     "--export", str(export), "--hop", str(hop), "--pub", address,
                     "--wait-subscribers", "1", "--stream-id", "conf", stdin=subprocess.PIPE)
        servers.append(second)
        second.wait_line("waiting for 1 subscriber")
        while not sub.poll(200):                    # our SUB reconnects and resubscribes
            assert second.process.poll() is None, second.stderr()
        parts = sub.recv_multipart()
        hello2 = strict(parts[1])
        check_hello(hello2)
        assert hello2["session"] != hello["session"]
        assert hello2["samples"] == 1 and hello2["uncertainty"] is False
        second.process.stdin.buffer.write(hostile.tobytes())
        second.process.stdin.close()
        got2 = receive_stream(sub, "conf")
        assert second.wait(30) == 0, second.stderr()
        frames2 = got2["frames"]
        assert frames2 and [h["seq"] for _, h in frames2] == list(range(len(frames2)))
        for parts, h in frames2:
            check_frame(parts, h, hello2)
            assert h["peak"] == 1.0 and 0 < h["rms"] < 1     # sanitised: +-Inf, 1e17 -> 1
            assert h["position_s"] <= 1.6 + 1e-6
        assert got2["end"]["reason"] == "end-of-input"
        assert got2["end"]["session"] == hello2["session"]
        assert got2["end"]["last_seq"] == frames2[-1][1]["seq"]
    finally:
        for server in servers:
            server.kill()
        sub.close(linger=0)
        prefix.close(linger=0)
        ctx.term()
