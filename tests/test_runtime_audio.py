"""Runtime pieces without a model: decoding, resampling, ring buffer, sources, wire format,
and the ZeroMQ publisher/subscriber behaviour (handshake, newest-only, slow subscribers)."""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time

import av
import numpy as np
import pytest
import soundfile as sf
import zmq

from runtime.audio.decode import StreamResampler, load_audio
from runtime.audio.ring import AudioRing
from runtime.audio.sources import FileSource, StdinSource, file_windows
from runtime.errors import S2IError
from runtime.wire.client import Subscriber
from runtime.wire.protocol import (
    Publisher,
    decode_audio,
    decode_frame,
    encode_audio,
    encode_frame,
    images_to_uint8,
    uncertainty_map,
)


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.repeat(mono[:, None], channels, axis=1)


def write_mp4(path, audio: np.ndarray, rate: int, with_audio: bool = True) -> None:
    """A real mp4 (mpeg4 video + AAC audio) written with PyAV."""
    container = av.open(str(path), "w")
    video = container.add_stream("mpeg4", rate=10)
    video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
    sound = container.add_stream("aac", rate=rate) if with_audio else None
    if sound is not None:
        sound.layout = "mono"
    for _ in range(5):
        frame = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
        container.mux(video.encode(frame))
    container.mux(video.encode(None))
    if sound is not None:
        for i in range(0, len(audio), 1024):
            block = np.ascontiguousarray(audio[None, i:i + 1024], dtype=np.float32)
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, i
            container.mux(sound.encode(frame))
        container.mux(sound.encode(None))
    container.close()


@pytest.mark.parametrize("suffix,rate,channels", [
    ("wav", 44100, 2), ("flac", 22050, 1), ("ogg", 48000, 2), ("mp3", 32000, 1),
])
def test_decode_any_rate_and_channels(tmp_path, suffix, rate, channels):
    path = tmp_path / f"tone.{suffix}"
    sf.write(path, tone(1.5, rate, channels=channels), rate)
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 24000) < 1200            # codecs may pad a frame
    spectrum = np.abs(np.fft.rfft(audio[2000:18000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 3   # the tone survived resampling
    assert 0.3 < np.abs(audio).max() < 0.7


def test_decode_video_file_and_its_errors(tmp_path):
    write_mp4(tmp_path / "clip.mp4", tone(1.2, 44100), 44100)
    audio = load_audio(tmp_path / "clip.mp4", 16000)
    assert abs(len(audio) - 19200) < 2000 and np.abs(audio).max() > 0.2
    write_mp4(tmp_path / "silent.mp4", tone(1, 44100), 44100, with_audio=False)
    (tmp_path / "junk.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    cases = {"missing.wav": "not found", "silent.mp4": "no audio track",
             "junk.wav": "cannot read", "empty.wav": "empty"}
    for name, words in cases.items():
        with pytest.raises(S2IError, match=words) as info:
            load_audio(tmp_path / name, 16000)
        assert "\n" not in str(info.value)


def test_stream_resampler_matches_whole_file_resampling():
    rate = 44100
    stereo = np.stack([tone(1, rate), tone(1, rate, 1000)], axis=1)
    resampler = StreamResampler(rate, 16000, channels=2)
    pieces = [resampler.process(stereo[i:i + 777]) for i in range(0, len(stereo), 777)]
    pieces.append(resampler.process(np.zeros((0, 2), np.float32), last=True))
    out = np.concatenate(pieces)
    assert abs(len(out) - 16000) <= 2
    import soxr
    whole = soxr.resample(stereo.mean(axis=1), rate, 16000)
    n = min(len(out), len(whole))
    assert np.abs(out[:n] - whole[:n]).max() < 1e-3


def test_ring_keeps_the_newest_second_and_its_capture_time():
    ring = AudioRing(1000)
    assert ring.latest(10) is None
    data = np.arange(2500, dtype=np.float32)
    for i in range(0, 2500, 300):
        ring.write(data[i:i + 300], capture_time=100.0 + i)
    audio, t, written = ring.latest(1000)
    assert written == 2500 and np.array_equal(audio, data[-1000:]) and t == 100.0 + 2400
    for n in (400, 700):           # inside the ring's tail, and across its wrap
        assert np.array_equal(ring.latest(n)[0], data[-n:])
    ring.write(np.arange(5000, dtype=np.float32), 1.0)   # bigger than the ring: keeps the tail
    assert np.array_equal(ring.latest(1000)[0], np.arange(4000, 5000, dtype=np.float32))
    assert not ring.wait_for(10_000, timeout=0.01)
    threading.Timer(0.05, ring.close).start()
    assert not ring.wait_for(10_000, timeout=5) and ring.closed


def test_file_windows_cover_the_file_hop_by_hop(tmp_path):
    audio = tone(2.3, 16000)
    sf.write(tmp_path / "a.wav", audio, 16000, subtype="FLOAT")
    windows = list(file_windows(str(tmp_path / "a.wav"), 16000, 16000, 4000))
    assert [end for _, end in windows] == list(range(16000, len(audio) + 1, 4000))
    for window, end in windows:
        np.testing.assert_array_equal(window, audio[end - 16000:end])
    sf.write(tmp_path / "short.wav", audio[:5000], 16000, subtype="FLOAT")
    (short, end), = file_windows(str(tmp_path / "short.wav"), 16000, 16000, 4000)
    assert len(short) == 16000 and end == 5000 and not short[5000:].any()


def test_paced_file_source_runs_at_real_time(tmp_path):
    sf.write(tmp_path / "a.wav", tone(0.6, 8000), 8000)
    ring = AudioRing(20000)
    start = time.monotonic()
    source = FileSource(ring.write, 16000, str(tmp_path / "a.wav")).start()
    assert source.finished.wait(5)
    elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 1.5, elapsed
    assert abs(ring.written - 9600) < 200


def test_stdin_source_reads_s16_and_f32_pcm():
    for fmt, dtype, scale in (("s16", "<i2", 32767), ("f32", "<f4", 1.0)):
        stereo = tone(0.5, 8000, channels=2)
        raw = (stereo * scale).astype(dtype).tobytes()
        blocks = []
        source = StdinSource(lambda b, t, blocks=blocks: blocks.append(b), 16000, 8000, 2, fmt,
                             stream=io.BufferedReader(io.BytesIO(raw))).start()
        assert source.finished.wait(5) and source.error is None
        audio = np.concatenate(blocks)
        assert abs(len(audio) - 8000) < 50 and 0.45 < np.abs(audio).max() < 0.55
    with pytest.raises(S2IError, match="unknown PCM format"):
        StdinSource(lambda b, t: None, 16000, 8000, 1, "s24")


def test_frame_and_audio_messages_round_trip():
    rng = np.random.default_rng(0)
    out = rng.uniform(-1, 1, (3, 3, 96, 96)).astype(np.float32)
    images = images_to_uint8(out)
    unc = uncertainty_map(out)
    assert images.shape == (3, 96, 96, 3) and unc.shape == (96, 96) and unc.max() > 0
    for encoding in ("png", "raw"):
        parts = encode_frame("s2i", {"seq": 7, "stream": "x", "timings_ms": {"encoder": 1.0}},
                             images, unc, encoding)
        assert len(parts) == 2 + 3 + 1
        frame = decode_frame(parts)
        assert frame.seq == 7 and frame.header["encoding"] == encoding
        assert set(frame.header["timings_ms"]) == {"encoder", "encoding"}
        for a, b in zip(frame.images, images, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(frame.uncertainty, unc)
    header, samples = decode_audio(encode_audio("mic", 3, tone(0.1, 16000), 16000, 12.5))
    assert header["seq"] == 3 and header["capture_time"] == 12.5 and samples.shape == (1600, 1)
    with pytest.raises(S2IError, match="protocol"):
        decode_frame([b"s2i", b'{"protocol": 99}'])


def _serve_hellos(publisher: Publisher, until: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not until.is_set():
            publisher.poll_subscriptions(20)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_handshake_newest_only_and_slow_subscribers_never_block():
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"}, sndhwm=5)
    images = np.zeros((1, 96, 96, 3), np.uint8)
    sent = 1000        # 27 MB of raw frames: more than PUB/SUB queues and TCP buffers hold
    try:
        with Subscriber(publisher.address) as everything, \
                Subscriber(publisher.address, newest_only=True) as newest:
            everything.socket.setsockopt(zmq.RCVHWM, 2)
            done = threading.Event()
            thread = _serve_hellos(publisher, done)
            assert everything.wait_ready(5)["backend"] == "test"    # subscription is live
            assert newest.wait_ready(5)["kind"] == "hello"
            done.set()
            thread.join()
            # Nobody reads while the frames go out: PUB drops past the HWM, never stalls.
            start = time.monotonic()
            for seq in range(sent):
                publisher.publish(encode_frame("s2i", {"seq": seq}, images, None, "raw"))
            assert time.monotonic() - start < 10
            for sub in (everything, newest):
                seqs = []
                while (frame := sub.receive(0.5)) is not None:
                    seqs.append(frame.seq)
                assert seqs == sorted(set(seqs)) and len(seqs) < sent  # in order; some lost
                if sub is everything:
                    assert seqs[0] == 0 and sub.skipped == 0        # lost only past the HWM
                else:
                    assert sub.skipped > 0                          # drained to the newest
    finally:
        publisher.close()
        ctx.term()


def test_runtime_never_imports_torch():
    import subprocess
    import sys

    code = ("import importlib, pkgutil, sys, runtime; "
            "names = [m.name for m in pkgutil.walk_packages(runtime.__path__, 'runtime.')]; "
            "[importlib.import_module(n) for n in names]; "
            "assert 'runtime.apps.stream' in names and 'runtime.cluster.bridge' in names, names; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'trainer', 'export')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_malformed_audio_messages_are_one_line_errors():
    good = encode_audio("mic", 3, tone(0.05, 16000), 16000, 12.5)
    header = json.loads(good[1])

    def with_header(text: str) -> list[bytes]:
        return [good[0], text.encode(), good[2]]

    bad = {"[1, 2]": "should be a JSON object",
           '"text"': "should be a JSON object",
           "null": "should be a JSON object"}
    for key in ("seq", "sample_rate", "channels", "capture_time"):
        for value in ("Infinity", "-Infinity", "NaN"):
            text = json.dumps(header)[:-1] + f', "{key}": {value}}}'   # the last key wins
            bad[text] = "not strict JSON: NaN is not JSON|Infinity is not JSON"
        for value in ("1e400", '"5"', "null", "true"):
            text = json.dumps(header)[:-1] + f', "{key}": {value}}}'
            bad[text] = f"'{key}' should be " + (
                "a finite number" if key == "capture_time" else "an integer in")
    for text, message in bad.items():
        with pytest.raises(S2IError, match=message) as info:
            decode_audio(with_header(text))
        assert "\n" not in str(info.value), text
    with pytest.raises(S2IError, match="does not split into 1-channel float32 frames"):
        decode_audio([good[0], good[1], good[2][:-1]])


def test_hostile_audio_headers_are_refused_before_use():
    """The issue's hostile messages: each is one S2IError line, checked before any of its
    values reaches soxr, a ring or the stream table."""
    good = encode_audio("mic", 3, tone(0.05, 16000), 16000, 12.5)
    header = json.loads(good[1])
    decoded, samples = decode_audio(good)
    assert decoded["stream"] == "mic" and decoded["node"] and samples.shape == (800, 1)

    def message(payload: bytes = good[2], **changes) -> list[bytes]:
        return [good[0], json.dumps(dict(header, **changes)).encode(), payload]

    cases = [
        (message(b"\x00" * 65536, sample_rate=1), "'sample_rate' should be an integer in"),
        (message(sample_rate=1e20), "'sample_rate' should be an integer in"),
        (message(sample_rate=16000.5), "'sample_rate' should be an integer in"),
        (message(channels=33), "'channels' should be an integer in \\[1, 32\\]"),
        (message(channels=0), "'channels' should be an integer in"),
        (message(dtype="float64"), "dtype should be one of"),
        (message(stream="x" * 65), "'stream' should be 1-64 characters"),
        (message(stream="../etc"), "'stream' should be 1-64 characters"),
        (message(stream=7), "'stream' should be 1-64 characters"),
        (message(node="a b"), "'node' should be 1-64 characters"),
        (message(seq=-1), "'seq' should be an integer"),
        (message(b"\x00" * (4 * 32001)), "over the cap"),                 # > 2 s at 16 kHz
        ([good[0], b" " * 4000 + good[1], good[2]], "header of 4"),
    ]
    for parts, words in cases:
        with pytest.raises(S2IError, match=words) as info:
            decode_audio(parts)
        assert "\n" not in str(info.value)
    pcm = message((np.array([16384, -32768], "<i2")).tobytes(), dtype="int16")
    assert decode_audio(pcm)[1][:, 0].tolist() == [0.5, -1.0]


def test_malformed_frames_are_one_line_errors_naming_the_frame():
    images = np.zeros((2, 8, 8, 3), np.uint8)
    unc = np.zeros((8, 8), np.uint8)
    png = encode_frame("s2i", {"seq": 4}, images, unc, "png")
    raw = encode_frame("s2i", {"seq": 4}, images, None, "raw")
    header = json.loads(png[1])

    def edit(parts: list[bytes], **changes) -> list[bytes]:
        h = dict(json.loads(parts[1]), **changes)
        h = {k: v for k, v in h.items() if v is not None}
        return [parts[0], json.dumps(h).encode(), *parts[2:]]

    cases = [
        ([png[0], png[1], b"not a png", png[3], png[4]], "S2I frame 4 image 0: png payload"),
        ([png[0], png[1], png[2], png[3], png[4][:20]], "S2I frame 4 uncertainty: png"),
        (edit(png, samples=None), "S2I frame 4: header 'samples' should be"),
        (edit(png, samples="2"), "S2I frame 4: header 'samples' should be"),
        (edit(png, samples=2.5), "S2I frame 4: header 'samples' should be"),
        (edit(png, samples=1), "S2I frame 4: has 5 parts, its header promises 4"),
        (edit(png, shape=[8, 9, 3]), r"S2I frame 4 image 0: image is \[8, 8, 3\]"),
        (edit(png, seq="x"), "S2I frame x: header 'seq' should be"),
        (edit(png, encoding="webp"), "S2I frame 4 image 0: unknown image encoding"),
        (edit(png, encoding="jpeg"), "S2I frame 4 image 0: jpeg payload does not decode"),
        (edit(raw, shape=[8, 8]), "S2I frame 4 image 0: raw image payload has 192 bytes"),
        (edit(raw, shape="8x8"), "S2I frame 4: header 'shape' should be a list"),
        ([raw[0], raw[1], raw[2][:-1], raw[3]], "S2I frame 4 image 0: raw image payload"),
        ([b"s2i", b"[4]"], "should be a JSON object"),
    ]
    assert header["samples"] == 2
    for parts, message in cases:
        with pytest.raises(S2IError, match=message) as info:
            decode_frame(parts)
        assert "\n" not in str(info.value), message


def test_publisher_counts_only_its_topic_and_sees_unsubscribes():
    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"})

    def wait_count(count: int) -> None:
        deadline = time.monotonic() + 10
        while publisher.poll_subscriptions(20) != count and time.monotonic() < deadline:
            pass
        assert publisher.subscribers == count

    other = ctx.socket(zmq.SUB)
    try:
        other.setsockopt(zmq.LINGER, 0)
        other.connect(publisher.address)
        other.setsockopt(zmq.SUBSCRIBE, b"video")      # not ours: never counted, no hello
        with Subscriber(publisher.address, ctx=ctx) as ours:
            done = threading.Event()
            thread = _serve_hellos(publisher, done)
            assert ours.wait_ready(5)["backend"] == "test"
            done.set()
            thread.join()
            with Subscriber(publisher.address, ctx=ctx) as second:
                deadline = time.monotonic() + 5
                while second.info is None and time.monotonic() < deadline:
                    publisher.poll_subscriptions(20)
                    with contextlib.suppress(S2IError):
                        second.wait_ready(0.05)
                assert second.info is not None
                wait_count(2)
            wait_count(1)                  # the closed subscriber's unsubscribe is seen
        wait_count(0)
        assert other.poll(100) == 0         # no hello on a topic it did not ask for
    finally:
        other.close(linger=0)
        publisher.close()
        ctx.term()


def test_capture_queue_drains_its_last_blocks():
    from runtime.apps.capture import BlockQueue

    blocks = BlockQueue(maxsize=3)
    for i in range(5):                               # the two oldest are dropped
        blocks.put(np.full(4, i, np.float32), float(i))
    assert blocks.dropped == 2
    assert [t for _, t in blocks.drain()] == [2.0, 3.0, 4.0] and blocks.drain() == []


def test_a_hung_pactl_is_a_one_line_error(tmp_path):
    import os

    from helpers_pulse import _pactl

    fake = tmp_path / "pactl"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(S2IError, match=r"pactl info did not answer within 0.2 s") as info:
        _pactl(["info"], env, timeout_s=0.2)
    assert "\n" not in str(info.value)
