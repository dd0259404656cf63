"""The ingress's cheap path (issue 21): a stream at the model rate reaches its ring as it came
(the features stage sanitises the batch), a stream at another rate is resampled in pieces
with the same result as block by block, and a NaN there is zeroed, not smeared by soxr."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import zmq

from runtime.audio.decode import StreamResampler
from runtime.serve.ingress import RESAMPLE_PIECE_S, NetworkIngress, receive
from runtime.wire.protocol import encode_audio

MODEL_RATE = 16000


@pytest.fixture
def ingress():
    ctx = zmq.Context()
    ingress = NetworkIngress(ctx, "tcp://127.0.0.1:*", MODEL_RATE, MODEL_RATE, MODEL_RATE // 2)
    yield ingress
    ingress.pull.close(linger=0)
    ctx.term()


def feed(ingress: NetworkIngress, sid: str, audio: np.ndarray, rate: int, block: int,
         channels: int = 1) -> list[bool]:
    """Send ``audio`` ([n] or [n, channels]) in blocks; whether the stream was due after each."""
    due = []
    for seq, start in enumerate(range(0, len(audio), block)):
        ingress.handle(encode_audio(sid, seq, audio[start:start + block], rate,
                                    100.0 + (start + block) / rate, channels=channels))
        due.append(sid in ingress.scheduler.due)
    return due


def test_resampling_in_pieces_equals_block_by_block(ingress):
    rate, block = 48000, 2400                     # 50-ms messages of 48 kHz stereo
    t = np.arange(int(1.6 * rate)) / rate
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), 0.5 * np.sin(2 * np.pi * 3000 * t)],
                      axis=1).astype(np.float32)
    due = feed(ingress, "wide", stereo, rate, block, channels=2)
    reference = StreamResampler(rate, MODEL_RATE, 2)
    expected = np.concatenate([reference.process(stereo[i:i + block])
                               for i in range(0, len(stereo), block)])
    state = ingress.streams["wide"]
    ring = state.ring.latest(state.ring.written)[0]
    # Whatever is still collected (less than a piece) has not reached the ring yet.
    assert state.pending_frames < RESAMPLE_PIECE_S * rate
    assert abs(len(ring) - (len(expected) - state.pending_frames * MODEL_RATE // rate)) <= 64
    np.testing.assert_allclose(ring, expected[:len(ring)], atol=1e-5)
    # The stream is due as soon as its first 1-s window has arrived, not a piece later.
    first_due = due.index(True)
    assert (first_due + 1) * block / rate == pytest.approx(1.0, abs=0.051)


def test_nan_at_the_model_rate_is_left_to_the_features_and_zeroed_when_resampled(ingress):
    from runtime.frontend import FrontEndConfig, log_mel_batch
    from runtime.wire.protocol import sanitise_audio

    hostile = np.full(MODEL_RATE, 0.25, np.float32)
    hostile[::97], hostile[5::101] = np.nan, np.inf
    feed(ingress, "same-rate", hostile, MODEL_RATE, 800)
    (window,) = ingress.take(4, 0.0, threading.Event())
    # No pass over it in the ingress: the ring holds what came; the batch is sanitised once.
    assert np.isnan(window.audio).sum() == np.isnan(hostile).sum()
    features = log_mel_batch(sanitise_audio(window.audio[None]), FrontEndConfig())
    assert np.isfinite(features).all()

    wide = np.repeat(hostile, 3)                   # the same at 48 kHz
    feed(ingress, "resampled", wide, 48000, 2400)
    state = ingress.streams["resampled"]
    ring = state.ring.latest(state.ring.written)[0]
    assert np.isfinite(ring).all() and np.abs(ring).max() <= 1.05   # zeroed, not smeared


def test_capture_sends_blocks_of_block_ms(tmp_path):
    import json

    from helpers_runtime import run_cli, write_tone_wav

    wav = write_tone_wav(tmp_path / "tone.wav", 1.0, rate=MODEL_RATE, channels=1)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:*")
    address = pull.getsockopt(zmq.LAST_ENDPOINT).decode()
    try:
        capture = run_cli("s2i-capture", "--file", str(wav), "--connect", address,
                          "--block-ms", "100", timeout=60)
        assert capture.returncode == 0, capture.stderr
        sizes = []
        while pull.poll(2000):
            parts = pull.recv_multipart()
            if not json.loads(parts[1]).get("end"):
                sizes.append(len(parts[2]) // 4)
        # 100 ms at 16 kHz (float32); a block sent before the connection is up may be dropped.
        assert set(sizes) == {1600} and 5 <= len(sizes) <= 10, sizes
        bad = run_cli("s2i-capture", "--file", str(wav), "--connect", address,
                      "--block-ms", "5000")
        assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
            "error: --block-ms must be between 10 and 1000, got 5000"]
    finally:
        pull.close(linger=0)
        ctx.term()


def test_samples_received_in_place_arrive_intact_and_in_order(ingress):
    """Through the real PULL socket (``drain``: payloads read without a copy), int16 and
    float32 blocks of two streams land in their rings whole and in order."""
    rng = np.random.default_rng(1)
    audio = {"f32": (rng.standard_normal(MODEL_RATE) * 0.3).astype(np.float32),
             "i16": (rng.integers(-32768, 32767, MODEL_RATE) / 32768.0).astype(np.float32)}
    push = ingress.pull.context.socket(zmq.PUSH)
    push.connect(ingress.address)
    try:
        for seq, start in enumerate(range(0, MODEL_RATE, 1000)):
            for sid, samples in audio.items():
                parts = encode_audio(sid, seq, samples[start:start + 1000], MODEL_RATE, 1.0)
                if sid == "i16":
                    header = json.loads(parts[1])
                    header["dtype"] = "int16"
                    parts[1] = json.dumps(header).encode()
                    parts[2] = np.round(samples[start:start + 1000] * 32768).astype("<i2") \
                        .tobytes()
                push.send_multipart(parts)
        received = 0
        while received < 2 * MODEL_RATE // 1000 and ingress.pull.poll(5000):
            received += ingress.drain()
    finally:
        push.close(linger=0)
    assert ingress.counters.bad_messages == 0
    for sid, samples in audio.items():
        ring = ingress.streams[sid].ring
        np.testing.assert_array_equal(ring.latest(MODEL_RATE)[0], samples)


def test_a_batch_is_sanitised_in_place_as_each_window_alone():
    from runtime.wire.protocol import audio_levels, sanitise_audio, sanitise_rows

    rng = np.random.default_rng(2)
    clean = (rng.standard_normal((3, 4000)) * 0.2).clip(-1, 1).astype(np.float32)
    hostile = clean.copy()
    hostile[1, ::97], hostile[1, 5::101], hostile[2, ::13] = np.nan, -np.inf, 7.0
    for batch in (clean, hostile):
        rows = batch.copy()
        rms, peak = sanitise_rows(rows)
        np.testing.assert_array_equal(rows, sanitise_audio(batch))
        ref_rms, ref_peak = audio_levels(sanitise_audio(batch))
        np.testing.assert_array_equal(peak, ref_peak)
        np.testing.assert_allclose(rms, ref_rms, atol=1e-6)
        exact = np.sqrt(np.mean(np.square(sanitise_audio(batch), dtype=np.float64), axis=-1))
        np.testing.assert_allclose(rms, exact, atol=1e-5)
    rms, peak = sanitise_rows(np.ones((1, 16000), np.float32))
    assert (rms[0], peak[0]) == (1.0, 1.0)         # rms never above the peak


def test_a_batch_published_back_to_back_reaches_a_subscriber_whole():
    """A batch larger than PUB_SNDHWM, sent in one burst, loses no frame (the server's
    high-water mark holds two batches: runtime.wire.protocol.pub_hwm)."""
    from runtime.wire.protocol import PUB_SNDHWM, Publisher, pub_hwm

    batch = 8 * PUB_SNDHWM
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"},
                          sndhwm=pub_hwm(batch))
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"s2i")
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.connect(publisher.address)
    try:
        while publisher.poll_subscriptions(100) < 1:
            pass
        payload = bytes(64 * 64 * 3)
        for seq in range(batch):
            publisher.publish([b"s2i", json.dumps({"kind": "frame", "stream": "a",
                                                   "seq": seq}).encode(), payload], "a", seq)
        seqs = []
        while sub.poll(2000):
            header = json.loads(sub.recv_multipart()[1])
            if header.get("kind") == "frame":
                seqs.append(header["seq"])
        assert seqs == list(range(batch)) and publisher.last_seq == {"a": batch - 1}
    finally:
        sub.close(linger=0)
        publisher.socket.close(linger=0)
        ctx.destroy(linger=0)


def test_receive_reads_whole_messages_part_by_part(ingress):
    """``receive`` (the ingress's socket read) returns every part of each message, in order
    and never mixed with the next message, whatever the part count; the third part is read
    in place and equals what was sent. A message of the wrong form is then refused by
    ``handle`` with one line, and the next one is filed."""
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(ingress.address)
    good = encode_audio("s", 0, np.linspace(-1, 1, 800, dtype=np.float32), MODEL_RATE, 1.0)
    sent = [[b"one"], [b"a", b"b"], [b"a", b"b", b"c", b"d"], good]
    for parts in sent:
        push.send_multipart(parts)
    try:
        assert ingress.pull.poll(5000)
        got = []
        while len(got) < len(sent):
            try:
                got.append(receive(ingress.pull))
            except zmq.Again:
                assert ingress.pull.poll(5000)
        assert [[bytes(p) for p in parts] for parts in got] == sent
        assert isinstance(got[3][2], memoryview)
        assert [ingress.handle(parts) for parts in got] == [None, None, None, "s"]
        assert ingress.counters.bad_messages == 3
        assert ingress.streams["s"].ring.written == 800
    finally:
        push.close(linger=0)
