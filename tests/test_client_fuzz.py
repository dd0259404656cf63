"""Fuzz tests (Hypothesis) of what a client reads from the network: ``decode_header`` and
``decode_frame`` raise nothing but their one-line ``S2IError``, and a ``Subscriber`` fed
fuzzed multipart messages by a real PUB socket skips them and still gets the good frame sent
after them. CI runs a fixed seed ("ci" profile, tests/conftest.py);
``S2I_HYPOTHESIS_PROFILE=deep`` runs many more examples."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import S2IError
from runtime.wire.client import Subscriber
from runtime.wire.images import png_bytes
from runtime.wire.protocol import Publisher, decode_frame, decode_header, encode_frame

NASTY_HEADERS = [b"NaN", b'{"protocol": 2, "seq": NaN}', b'{"protocol": 2, "x": -Infinity}',
                 b'{"protocol": 2, "seq": 1e999}', b"9" * 5000,
                 b'{"protocol": 2, "kind": "frame", "seq": ' + b"9" * 5000 + b"}",
                 b"[" * 100_000, b'{"protocol": 2' + b', "a": {' * 5000, b"\xff\xfe\x00",
                 b"", b"null", b'{"protocol": 2, "kind": "end", "stream": [1]}']

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=12)
shapes = st.lists(st.integers(-1, 6), max_size=4) | st.sampled_from(
    [[4, 4, 3], [4, 4], [3, 5, 3], [10**6, 10**6, 3], [2**70, 1, 3]])
FIELDS = {
    "kind": st.sampled_from(["frame", "frame", "hello", "end", "later-kind"]) | json_values,
    "seq": st.integers(-3, 2**64) | json_values,
    "samples": st.integers(0, 3) | json_values,
    "shape": shapes | json_values,
    "uncertainty": st.booleans() | json_values,
    "uncertainty_shape": shapes | json_values,
    "encoding": st.sampled_from(["png", "raw", "jpeg"]) | json_values,
    "stream": st.text(max_size=10) | json_values,
    "uncertainty_scale": st.floats(allow_nan=False, allow_infinity=False) | json_values,
}
headers = st.fixed_dictionaries(
    {"protocol": st.sampled_from([2, 2, 2, 1, "2", True, None])}, optional=FIELDS)
header_bytes = (headers.map(lambda h: json.dumps(h).encode())
                | st.sampled_from(NASTY_HEADERS) | st.binary(max_size=40))
GOOD_PAYLOADS = [png_bytes(np.full((4, 4, 3), 9, np.uint8)), png_bytes(np.zeros((4, 4), np.uint8)),
                 png_bytes(np.zeros((3, 5, 3), np.uint8)), bytes(48), bytes(16), bytes(45)]
payloads = st.lists(st.sampled_from(GOOD_PAYLOADS) | st.binary(max_size=60), max_size=4)


def _one_line(exc: S2IError) -> None:
    text = str(exc)
    assert text and "\n" not in text and len(text) < 400, text


def test_the_findings_are_refused_with_one_line():
    """An int of 4,300+ digits (ValueError from json.loads) and NaN/Infinity/1e999 (not
    strict JSON) used to get through or escape as another exception."""
    for header in NASTY_HEADERS[:6]:
        with pytest.raises(S2IError, match="not strict JSON") as info:
            decode_header([b"s2i", header])
        _one_line(info.value)


@given(parts=st.lists(st.binary(max_size=30), max_size=3), header=header_bytes)
def test_decode_header_raises_only_its_error(parts, header):
    message = parts[:1] + [header] + parts[1:]
    try:
        decoded = decode_header(message)
    except S2IError as exc:
        _one_line(exc)
        return
    assert isinstance(decoded, dict) and decoded["protocol"] == 2
    json.dumps(decoded, allow_nan=False)          # what was accepted is strict JSON again


@given(topic=st.binary(max_size=6), header=header_bytes, images=payloads)
def test_decode_frame_raises_only_its_error(topic, header, images):
    try:
        frame = decode_frame([topic, header, *images])
    except S2IError as exc:
        _one_line(exc)
        return
    assert len(frame.images) == frame.header["samples"]
    for image in frame.images:
        assert image.dtype == np.uint8 and list(image.shape) == frame.header["shape"]
    if frame.uncertainty is not None:
        assert list(frame.uncertainty.shape) == frame.header["uncertainty_shape"]


@pytest.fixture(scope="module")
def pubsub():
    """A real XPUB (the server's Publisher) and a Subscriber whose subscription is live."""
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "fuzz"})
    sub = Subscriber(publisher.address, ctx=ctx)
    deadline = time.monotonic() + 30
    while sub.info is None and time.monotonic() < deadline:
        publisher.poll_subscriptions(50)
        try:
            sub.wait_ready(0.2)
        except S2IError:
            pass
    assert sub.info is not None, "no hello within 30 s"
    yield publisher, sub
    sub.close()
    publisher.close()
    ctx.term()


MARKER = itertools.count()
GOOD_IMAGES = np.full((1, 4, 4, 3), 77, np.uint8)


@settings(max_examples=max(25, settings.default.max_examples // 5))
@given(messages=st.lists(st.tuples(header_bytes, payloads), min_size=1, max_size=4))
def test_subscriber_skips_fuzzed_messages_and_gets_the_next_good_frame(pubsub, messages):
    publisher, sub = pubsub
    marker = next(MARKER)
    for header, images in messages:
        publisher.socket.send_multipart([b"s2i", header, *images])
    publisher.socket.send_multipart(encode_frame("s2i", {"seq": marker, "stream": "after-fuzz"},
                                                 GOOD_IMAGES, None, "png"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        frame = sub.receive(timeout_s=1.0)        # raises nothing: bad messages are skipped
        if frame is not None and frame.stream == "after-fuzz" and frame.seq == marker:
            assert frame.images[0][0, 0, 0] == 77
            return
    raise AssertionError("the good frame sent after the fuzzed messages never arrived")


def test_subscriber_counts_and_logs_bad_messages_rate_limited(pubsub, capsys):
    publisher, sub = pubsub
    before = sub.bad
    for header in NASTY_HEADERS[:6] * 3:
        publisher.socket.send_multipart([b"s2i", header])
    good = encode_frame("s2i", {"seq": 10**6, "stream": "counted"}, GOOD_IMAGES, None, "raw")
    publisher.socket.send_multipart(good)
    frame = None
    deadline = time.monotonic() + 20
    while (frame is None or frame.stream != "counted") and time.monotonic() < deadline:
        frame = sub.receive(timeout_s=1.0)
        if frame is None:        # a loaded machine: say it again (good frames are not counted)
            publisher.socket.send_multipart(good)
    assert frame is not None and frame.stream == "counted"
    assert sub.bad - before == 18
    lines = [line for line in capsys.readouterr().err.splitlines() if "skipping a bad" in line]
    assert len(lines) <= 1, lines                 # one line per 10 s, however many come
