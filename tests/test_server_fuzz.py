"""Hypothesis fuzz tests of the server side of the wire (issue 22): whatever arrives on the
PULL socket, ``decode_audio`` raises nothing but a one-line ``S2IError``,
``NetworkIngress.handle`` files or refuses it without reaching its unexpected-error path,
and a live s2i-serve keeps serving a good stream. CI runs the ``ci`` profile (fixed seed,
200 examples); ``--hypothesis-profile=deep`` (or ``S2I_HYPOTHESIS_PROFILE=deep``) runs 5,000
random ones (tests/conftest.py)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI, tiny_export
from hypothesis import given
from hypothesis import strategies as st
from test_serve import assert_still_serving, serving_a_good_stream

from runtime.errors import S2IError
from runtime.serve.ingress import NetworkIngress
from runtime.wire.protocol import (
    MAX_AUDIO_CHANNELS,
    NODE_ID_PATTERN,
    STREAM_ID_PATTERN,
    decode_audio,
    encode_audio,
)

RATE = 16000
KEYS = ["kind", "protocol", "stream", "node", "seq", "sample_rate", "channels", "dtype",
        "capture_time", "end"]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**64, 2**64) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["audio", "Audio", "float32", "int16", "s", "n"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                   max_size=3),
    max_leaves=8)

valid_headers = st.builds(
    lambda stream, node, seq, rate, channels, dtype, protocol: {
        "kind": "audio", "protocol": protocol, "stream": stream, "node": node, "seq": seq,
        "sample_rate": rate, "channels": channels, "dtype": dtype, "capture_time": 1.5},
    st.sampled_from(["s", "t"]), st.sampled_from(["n1", "n2"]), st.integers(0, 6),
    st.sampled_from([8000, 16000, 44100, 48000, 192000]), st.integers(1, 3),
    st.sampled_from(["float32", "int16"]), st.sampled_from([1, 2]))


@st.composite
def headers(draw) -> bytes:
    """A valid header with some fields replaced by any JSON or removed; or any bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=64))
    header = draw(valid_headers)
    header.update(draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)))
    for key in draw(st.sets(st.sampled_from(KEYS), max_size=2)):
        header.pop(key, None)
    return json.dumps(header, allow_nan=True).encode()


@st.composite
def audio_messages(draw) -> list[bytes]:
    header = draw(headers())
    payload = draw(st.one_of(st.binary(max_size=64),
                             st.integers(0, 9000).map(lambda n: b"\x00" * n),
                             st.integers(0, 3000).map(lambda n: np.full(n, 0.25, "<f4")
                                                      .tobytes())))
    shape = draw(st.integers(0, 19))
    if shape == 0:
        return draw(st.lists(st.binary(max_size=16), max_size=4))
    if shape == 1:
        return [draw(st.binary(max_size=8)), header, payload]
    return [b"audio", header, payload]


@given(audio_messages())
def test_decode_audio_raises_nothing_but_one_line(parts):
    try:
        header, samples = decode_audio(parts)
    except S2IError as exc:
        assert "\n" not in str(exc)
        return
    assert STREAM_ID_PATTERN.fullmatch(header["stream"])
    assert NODE_ID_PATTERN.fullmatch(header["node"])
    assert isinstance(header["end"], bool)
    assert samples.dtype == np.float32 and samples.ndim == 2
    if not header["end"]:
        assert type(header["seq"]) is int and 0 <= header["seq"] <= 2**53
        assert type(header["channels"]) is int and 1 <= header["channels"] <= MAX_AUDIO_CHANNELS
        assert samples.shape[1] == header["channels"]
        assert np.isfinite(header["capture_time"])


@pytest.fixture(scope="module")
def ingress():
    ctx = zmq.Context()
    ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", RATE, RATE // 10, RATE // 40,
                             max_streams=2, takeover_s=0.0)
    ingress.say = lambda key, message: True       # refusals are expected here: no log lines
    yield ingress
    ingress.pull.close(linger=0)
    ctx.term()


@given(st.lists(audio_messages(), min_size=1, max_size=6))
def test_ingress_files_or_refuses_every_message(ingress, messages):
    never = threading.Event()
    for parts in messages:
        sid = ingress.handle(parts)
        assert sid is None or isinstance(sid, str)
        if ingress.scheduler.due:
            for window in ingress.take(4, 0.0, never):
                assert window.audio.shape == (RATE // 10,)
    assert ingress.counters.unexpected_errors == 0


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def test_the_server_keeps_serving_a_good_stream_through_fuzzed_messages(export):
    server = CLI("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*",
                 "--pub", "tcp://127.0.0.1:*", "--hop", "0.25", "--encoding", "raw",
                 "--max-streams", "8")
    with serving_a_good_stream(server) as (audio, sub, ctx, good_stream):
        hostile = ctx.socket(zmq.PUSH)
        hostile.connect(audio)

        @given(st.lists(audio_messages(), min_size=1, max_size=4))
        def send(messages):
            for parts in messages:
                if parts:               # ZeroMQ has no zero-part message
                    hostile.send_multipart(parts)

        send()
        hostile.send_multipart(encode_audio("after", 0, np.zeros(800, np.float32), RATE,
                                            time.time()))
        assert_still_serving(sub, "good", "fuzzed messages", within=5)
        hostile.close(linger=0)
        good_stream.stop.set()
        server.signal()
        assert server.wait(20) == 0, server.stderr()
    err = server.stderr()
    assert "Traceback" not in err and "unexpected error in" not in err, err
