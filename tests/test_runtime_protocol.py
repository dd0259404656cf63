"""Protocol 2 on real sockets: strict JSON whatever the audio, rate-limited hellos that cannot
crowd frames out, end messages after a stream's last frame, and a newest-only subscriber that
really gets the newest frame."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from runtime.errors import S2IError
from runtime.wire.protocol import (
    HELLO_INTERVAL_S,
    PROTOCOL_VERSION,
    SESSION_ID,
    Publisher,
    audio_level,
    audio_levels,
    decode_header,
    dumps_header,
    encode_audio,
    encode_frame,
    hello_message,
    sanitise_audio,
)


def strict_json(data: bytes) -> dict:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")
    return json.loads(data, parse_constant=refuse)


def test_audio_is_sanitised_and_levels_are_finite_and_consistent():
    hostile = np.array([1e17, -np.inf, np.nan, 4.0, np.inf, 0.5, -3e38], np.float32)
    np.testing.assert_array_equal(sanitise_audio(hostile), [1, -1, 0, 1, 1, 0.5, -1])
    rms, peak = audio_level(hostile)
    assert peak == 1.0 and rms == pytest.approx(np.sqrt((1 + 1 + 0 + 1 + 1 + 0.25 + 1) / 7))
    assert audio_level(np.full(16000, 1e17, np.float32)) == (1.0, 1.0)    # not Infinity
    assert audio_level(np.zeros(0, np.float32)) == (0.0, 0.0)
    # A batch's levels (the features stage computes them for every window at once) are
    # each window's own.
    rng = np.random.default_rng(0)
    batch = np.stack([np.zeros(64), rng.standard_normal(64) * 4, np.resize(hostile, 64),
                      rng.standard_normal(64) * 0.1]).astype(np.float32)
    rms_b, peak_b = audio_levels(sanitise_audio(batch))
    assert [(float(r), float(p)) for r, p in zip(rms_b, peak_b, strict=True)] == \
        [audio_level(row) for row in batch]
    with pytest.raises(S2IError, match="non-finite number in \\['rms'\\]"):
        dumps_header({"kind": "frame", "rms": float("inf")})
    with pytest.raises(S2IError, match="non-finite"):
        dumps_header({"kind": "frame", "timings_ms": {"x": float("nan")}})


def test_hostile_audio_through_the_pipeline_gives_strict_json(tmp_path_factory):
    from helpers_runtime import sensitive_export

    from runtime.model.backends import open_translator
    from runtime.serve.pipeline import Pipeline

    pipeline = Pipeline(open_translator(sensitive_export(tmp_path_factory),
                                        backend="onnxruntime-cpu"), samples=2, uncertainty=True)
    window = np.full(pipeline.window, 1e17, np.float32)
    window[::7] = np.nan
    window[::11] = -np.inf
    header = strict_json(pipeline.message(window, time.time())[1])
    assert header["peak"] == 1.0 and 0 < header["rms"] <= 1.0
    # The model sees what the levels describe: the sanitised (clipped) window.
    clipped = Pipeline(pipeline.translator, seed=3).process_window(sanitise_audio(window), 0.0)
    again = Pipeline(pipeline.translator, seed=3).process_window(window, 0.0)
    np.testing.assert_array_equal(clipped[1], again[1])
    assert header["session"] == SESSION_ID and header["protocol"] == PROTOCOL_VERSION == 2
    assert header["uncertainty_shape"] == [96, 96] and header["uncertainty_scale"] == 0.5
    info = pipeline.info()
    assert info["shape"] == [96, 96, 3]
    hello = strict_json(hello_message("s2i", info)[1])
    assert hello["shape"] == [96, 96, 3] and hello["uncertainty_shape"] == [96, 96]
    assert hello["session"] == SESSION_ID and hello["topic"] == "s2i"
    # Audio headers are strict too, and v1 capture nodes are still read.
    audio = encode_audio("node", 0, np.zeros(4, np.float32), 16000, time.time())
    assert strict_json(audio[1])["protocol"] == 2
    v1 = dict(strict_json(audio[1]), protocol=1)
    from runtime.wire.protocol import decode_audio
    assert decode_audio([audio[0], json.dumps(v1).encode(), audio[2]])[0]["protocol"] == 1
    with pytest.raises(S2IError, match="protocol 1; this client reads version 2"):
        decode_header([b"s2i", json.dumps({"kind": "frame", "protocol": 1}).encode()])


def _frame(seq: int, stream: str = "main") -> list[bytes]:
    return encode_frame("s2i", {"stream": stream, "seq": seq},
                        np.full((1, 8, 8, 3), seq % 256, np.uint8), None, "raw")


def test_a_subscription_flood_costs_an_innocent_subscriber_no_frame():
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"})
    innocent = ctx.socket(zmq.SUB)
    innocent.connect(publisher.address)
    innocent.setsockopt(zmq.SUBSCRIBE, b"s2i")
    attacker = ctx.socket(zmq.SUB)
    attacker.connect(publisher.address)
    try:
        deadline = time.monotonic() + 10
        while publisher.poll_subscriptions(50) < 1 and time.monotonic() < deadline:
            pass
        innocent.poll(5000)                       # the innocent's hello
        assert decode_header(innocent.recv_multipart())["kind"] == "hello"
        hellos_before = publisher.hellos
        for _ in range(5000):                     # subscribe/unsubscribe pairs
            attacker.setsockopt(zmq.SUBSCRIBE, b"s2i")
            attacker.setsockopt(zmq.UNSUBSCRIBE, b"s2i")
        start = time.monotonic()
        for seq in range(30):                     # frames go out while the flood arrives
            publisher.publish(_frame(seq))
            time.sleep(0.02)
        while time.monotonic() - start < 2.0:
            publisher.poll_subscriptions(50)
        elapsed = time.monotonic() - start
        kinds, seqs = [], []
        while innocent.poll(300):                 # the innocent reads only now: worst case
            header = decode_header(innocent.recv_multipart())
            kinds.append(header["kind"])
            if header["kind"] == "frame":
                seqs.append(header["seq"])
    finally:
        innocent.close(linger=0)
        attacker.close(linger=0)
        publisher.close()
        ctx.term()
    assert seqs == list(range(30)), kinds
    hellos = publisher.hellos - hellos_before
    assert 1 <= hellos <= elapsed / HELLO_INTERVAL_S + 2 and kinds.count("hello") == hellos


def test_end_follows_the_last_frame_and_carries_its_seq():
    from runtime.wire.client import Subscriber

    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"})
    sub = Subscriber(publisher.address, ctx=ctx)
    try:
        ready = threading.Thread(target=sub.wait_ready, args=(10,))
        ready.start()
        while ready.is_alive():
            publisher.poll_subscriptions(20)
        publisher.publish(_frame(0, "a"))
        publisher.end("a", "node-stopped", delay_s=0.3)     # the model still holds frame 1
        publisher.publish(_frame(1, "a"))
        publisher.end("b", "node-expired", delay_s=0)        # a stream without frames
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            publisher.poll_subscriptions(20)
        assert [sub.receive(2).seq for _ in range(2)] == [0, 1]
        assert sub.receive(0.5) is None
    finally:
        sub.close()
        publisher.close()
        ctx.term()
    assert sub.ended["a"]["reason"] == "node-stopped" and sub.ended["a"]["last_seq"] == 1
    assert sub.ended["b"]["last_seq"] is None and sub.ended["b"]["session"] == SESSION_ID
    assert publisher.last_seq == {}       # forgotten once ended


def test_newest_only_subscriber_gets_the_newest_frame():
    """Scaled-down form of ``python -m benchmarks newest-only`` (2 s per frame there)."""
    from benchmarks.newest_only import measure_stale

    row = measure_stale("subscriber", consumer_s=0.4, hop_s=0.05, frames=8)
    assert row["stale"] <= 1, row


def test_ingress_reports_stopped_and_expired_streams():
    from runtime.serve.ingress import NetworkIngress

    ends = []
    ctx = zmq.Context()
    ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", 16000, 16000, 8000, idle_expiry_s=0.2,
                             on_end=lambda sid, reason: ends.append((sid, reason)))
    try:
        block = np.zeros(800, np.float32)
        assert ingress.handle(encode_audio("a", 0, block, 16000, time.time())) == "a"
        assert ingress.handle(encode_audio("b", 0, block, 16000, time.time())) == "b"
        assert ingress.handle(encode_audio("a", 1, np.zeros(0, np.float32), 16000,
                                           time.time(), end=True)) == "a"
        assert ends == [("a", "node-stopped")] and set(ingress.streams) == {"b"}
        time.sleep(0.3)
        assert ingress.expire_idle() == 1
        assert ends == [("a", "node-stopped"), ("b", "node-expired")]
    finally:
        ingress.pull.close(linger=0)
        ctx.term()
