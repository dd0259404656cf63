"""The ingress's cheap path (issue 21): a stream at the model rate reaches its ring as it came
(the features stage sanitises the batch), a stream at another rate is resampled in pieces
with the same result as block by block, and a NaN there is zeroed, not smeared by soxr."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from runtime.audio.decode import StreamResampler
from runtime.serve.ingress import RESAMPLE_PIECE_S, NetworkIngress
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
