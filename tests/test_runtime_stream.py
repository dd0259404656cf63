"""End to end on CPU with a real tiny ONNX export: s2i-stream, s2i-serve + s2i-capture over tcp,
real ZeroMQ subscribers, failure cases (one line, exit 2) and clean shutdown on signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from helpers_runtime import CLI, run_cli, tiny_export, write_tone_wav
from PIL import Image

from runtime.model.translator import EncoderGenerator
from runtime.wire.client import Subscriber

ADDRESS = r"(tcp://127\.0\.0\.1:\d+)"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def receive_all(sub: Subscriber, count: int, timeout: float = 30.0) -> list:
    frames = []
    while len(frames) < count:
        frame = sub.receive(timeout)
        assert frame is not None, f"only {len(frames)} of {count} frames arrived"
        frames.append(frame)
    return frames


def check_frame(frame, samples: int, uncertainty: bool) -> None:
    h = frame.header
    assert h["kind"] == "frame" and h["protocol"] == 2 and h["samples"] == samples
    assert set(h["timings_ms"]) == {"features", "encoder", "generator", "encoding"}
    assert all(v >= 0 for v in h["timings_ms"].values())
    assert 0 <= h["publish_time"] - h["capture_time"] < 30
    assert len(frame.images) == samples
    for image in frame.images:
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    assert (frame.uncertainty is not None) == uncertainty
    if uncertainty:
        assert frame.uncertainty.shape == (96, 96)


def test_file_through_s2i_stream_to_a_subscriber(export, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 3.0, rate=44100, channels=2)
    cli = CLI("s2i-stream", "--file", str(wav), "--export", str(export), "--hop", "0.5",
              "--samples", "3", "--uncertainty", "--seed", "1", "--wait-subscribers", "1",
              "--pub", "tcp://127.0.0.1:*", "--stream-id", "file-test")
    try:
        address = cli.wait_line("waiting for 1 subscriber.* on " + ADDRESS).group(1)
        with Subscriber(address) as sub:
            info = sub.wait_ready(20)
            assert info["samples"] == 3 and info["classes"]
            frames = receive_all(sub, 5)            # windows ending at 1.0, 1.5, ..., 3.0 s
            assert sub.receive(1.0) is None
        assert cli.wait() == 0, cli.stderr()
    finally:
        cli.kill()
    assert [f.seq for f in frames] == [0, 1, 2, 3, 4]
    assert [f.header["position_s"] for f in frames] == [1.0, 1.5, 2.0, 2.5, 3.0]
    for frame in frames:
        check_frame(frame, 3, uncertainty=True)
        assert frame.header["stream"] == "file-test" and frame.header["peak"] > 0.2
    # MC dropout: the K samples of one window differ, and so does the uncertainty map.
    assert not np.array_equal(frames[0].images[0], frames[0].images[1])
    assert frames[0].uncertainty.max() > 0
    assert "Traceback" not in cli.stderr()


def test_capture_and_generation_in_separate_processes(export, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 1.8, rate=22050, channels=1)
    server = CLI("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*",
                 "--pub", "tcp://127.0.0.1:*", "--hop", "0.5", "--encoding", "raw")
    try:
        match = server.wait_line(f"serving on {ADDRESS} -> {ADDRESS}")
        audio_address, pub_address = match.group(1), match.group(2)
        with Subscriber(pub_address) as sub:
            sub.wait_ready(20)
            junk = zmq.Context.instance().socket(zmq.PUSH)   # malformed audio: logged, skipped
            junk.connect(audio_address)
            junk.send_multipart([b"audio", b"not json", b"\x00"])
            junk.send_multipart([b"audio", b'{"protocol": 1, "dtype": "float32"}', b"\x00" * 8])
            junk.close(linger=1000)
            for _ in range(2):   # the capture node stops and starts again: the server goes on
                capture = run_cli("s2i-capture", "--file", str(wav), "--connect", audio_address,
                                  "--stream-id", "node-a", timeout=60)
                assert capture.returncode == 0, capture.stderr
                frames = receive_all(sub, 2)
                for frame in frames:
                    check_frame(frame, 1, uncertainty=False)
                    assert frame.header["stream"] == "node-a"
                    assert frame.header["encoding"] == "raw"
                # The stopped node's stream ends after its last frame; seq restarts after it.
                assert [f.seq for f in frames] == [0, 1]
                assert sub.receive(3) is None
                end = sub.ended.pop("node-a")
                assert end["reason"] == "node-stopped" and end["last_seq"] == 1
                assert end["session"] == frames[0].session
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0, server.stderr()
    finally:
        server.kill()
    assert "shut down cleanly" in server.stderr() and "Traceback" not in server.stderr()
    assert "ignoring a bad audio message" in server.stderr()


def test_pipeline_library_silence_clipping_and_seeds(export):
    from runtime.model.backends import open_translator
    from runtime.serve.pipeline import Pipeline

    translator = open_translator(export, backend="onnxruntime-cpu")
    rng = np.random.default_rng(0)
    windows = {"silence": np.zeros(16000, np.float32),
               "clipped": np.sign(rng.standard_normal(16000)).astype(np.float32) * 4.0,
               "broken": np.full(16000, np.nan, np.float32)}
    pipeline = Pipeline(translator, samples=3, hop_seconds=0.25, uncertainty=True, seed=5)
    for name, audio in windows.items():
        header, images, unc = pipeline.process_window(audio, 123.0, stream_id=name)
        assert images.shape == (3, 96, 96, 3) and images.dtype == np.uint8, name
        assert unc is not None and unc.shape == (96, 96)
        assert header["seq"] == 0 and header["stream"] == name
        assert set(header["timings_ms"]) == {"features", "encoder", "generator"}
    again = Pipeline(translator, samples=3, hop_seconds=0.25, uncertainty=True, seed=5)
    first = Pipeline(translator, samples=3, seed=5).process_window(windows["clipped"], 0.0)[1]
    np.testing.assert_array_equal(
        first, again.process_window(windows["clipped"], 0.0)[1])   # same seed, same masks


def test_stdin_pcm_and_a_dead_subscriber(export, tmp_path):
    rate = 8000
    t = np.arange(int(2.5 * rate)) / rate
    pcm = (np.stack([np.sin(2 * np.pi * 300 * t)] * 2, axis=1) * 12000).astype("<i2")
    cli = CLI("s2i-stream", "--stdin", "--rate", str(rate), "--channels", "2", "--format", "s16",
              "--export", str(export), "--hop", "0.5", "--wait-subscribers", "2",
              "--pub", "tcp://127.0.0.1:*", stdin=subprocess.PIPE)
    try:
        address = cli.wait_line("waiting for 2 subscriber.* on " + ADDRESS).group(1)
        # A second subscriber in its own process takes a frame and dies without closing.
        dead = subprocess.Popen(
            [sys.executable, "-c",
             "import os, sys; from runtime.wire.client import Subscriber; "
             "s = Subscriber(sys.argv[1]); s.wait_ready(20); s.receive(30); os._exit(0)",
             address])
        with Subscriber(address) as sub:
            sub.wait_ready(20)
            assert cli.process.stdin is not None
            cli.process.stdin.buffer.write(pcm.tobytes())
            cli.process.stdin.close()                # EOF ends the stream
            frames = []
            while (frame := sub.receive(3)) is not None:
                frames.append(frame)
            assert dead.wait(30) == 0
        assert cli.wait() == 0, cli.stderr()
    finally:
        cli.kill()
    assert len(frames) >= 1 and [f.seq for f in frames] == list(range(len(frames)))
    assert all(f.header["peak"] > 0.3 for f in frames)


def test_sigterm_and_sigint_shut_down_cleanly(export, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 1.2)
    for signum, code in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
        cli = CLI("s2i-stream", "--file", str(wav), "--realtime", "--loop", "--export",
                  str(export), "--hop", "0.25", "--pub", "tcp://127.0.0.1:*",
                  "--wait-subscribers", "1")
        try:
            address = cli.wait_line("waiting for 1 subscriber.* on " + ADDRESS).group(1)
            with Subscriber(address) as sub:
                sub.wait_ready(20)
                assert sub.receive(20) is not None
                cli.signal(signum)
                assert cli.wait(15) == code, cli.stderr()
        finally:
            cli.kill()
        assert "shut down cleanly" in cli.stderr() and "Traceback" not in cli.stderr()


def one_line_error(result: subprocess.CompletedProcess, words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines


def test_bad_input_gives_one_line_and_exit_code_2(export, tmp_path):
    wav = write_tone_wav(tmp_path / "ok.wav", 1.0)
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00\x01not audio" * 50)
    cases = [
        (["--file", str(tmp_path / "nope.wav"), "--export", str(export)], "not found"),
        (["--file", str(junk), "--export", str(export)], "cannot read"),
        (["--file", str(wav), "--export", str(tmp_path / "no-export")], "export folder not found"),
        (["--file", str(wav), "--export", str(export), "--hop", "3"], "--hop"),
        (["--export", str(export)], "choose exactly one audio source"),
    ]
    # A mismatched export: model file changed after export, and a front end the model can't take.
    changed = tmp_path / "changed"
    shutil.copytree(export, changed)
    with open(changed / "encoder.onnx", "ab") as f:
        f.write(b"\x00")
    cases.append((["--file", str(wav), "--export", str(changed)], "sha256"))
    other = tmp_path / "other-front-end"
    shutil.copytree(export, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["front_end"]["n_mels"] = 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    cases.append((["--file", str(wav), "--export", str(other)], "front end"))
    for args, words in cases:
        one_line_error(run_cli("s2i-stream", *args), words)


def test_unknown_microphone_device(export):
    pytest.importorskip("pyaudio", reason="PyAudio is not installed (pip install s2i[mic])")
    result = run_cli("s2i-stream", "--mic", "--device", "no-such-device-xyz", "--export",
                     str(export))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert "unknown input device" in lines[0] or "no microphone" in lines[0]


def test_the_ten_line_subscriber_of_the_protocol_doc(export, tmp_path):
    doc = (Path(__file__).parents[1] / "docs" / "PROTOCOL.md").read_text()
    snippet = doc.split("## A subscriber in ten lines")[1].split("```python")[1].split("```")[0]
    assert len(snippet.strip().splitlines()) <= 10
    wav = write_tone_wav(tmp_path / "tone.wav", 2.0)
    cli = CLI("s2i-stream", "--file", str(wav), "--export", str(export), "--hop", "0.5",
              "--samples", "2", "--wait-subscribers", "1", "--pub", "tcp://127.0.0.1:*")
    out = tmp_path / "out"
    out.mkdir()
    client = None
    try:
        address = cli.wait_line("waiting for 1 subscriber.* on " + ADDRESS).group(1)
        client = subprocess.Popen([sys.executable, "-c",
                                   snippet.replace("tcp://127.0.0.1:5556", address)], cwd=out)
        assert cli.wait() == 0, cli.stderr()
        deadline = time.monotonic() + 10
        while len(list(out.glob("*.png"))) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        cli.kill()
        if client is not None:
            client.kill()
            client.wait()
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [f"main_{seq:06d}_{k}.png" for seq in range(3) for k in range(2)]
    assert np.asarray(Image.open(out / names[0])).shape == (96, 96, 3)


def test_no_microphone_and_no_pyaudio(export, tmp_path):
    pytest.importorskip("pyaudio", reason="PyAudio is not installed (pip install s2i[mic])")
    env = dict(os.environ, PULSE_SERVER=f"unix:{tmp_path}/no-pulse-here")
    listed = run_cli("s2i-stream", "--list-devices", env=env)
    if listed.returncode == 0 and listed.stdout.strip() != "no input devices":
        pytest.skip("this machine has real input devices, so 'no microphone' cannot be shown")
    for script in ("s2i-stream", "s2i-capture"):
        one_line_error(run_cli(script, "--mic", "--export", str(export), env=env)
                       if script == "s2i-stream" else run_cli(script, "--mic", env=env),
                       "no microphone")
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "pyaudio.py").write_text("raise ImportError('hidden for this test')\n")
    paths = [str(blocked), os.environ.get("PYTHONPATH", "")]   # keep the caller's tree too
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
    one_line_error(run_cli("s2i-stream", "--mic", "--export", str(export), env=env),
                   "s2i[mic]")


class SlowTranslator(EncoderGenerator):
    """A real translator that takes ``delay`` seconds more per window (a slow model)."""

    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.manifest, self.backend = inner.manifest, "slow-stub"
        self.dropout = inner.dropout
        self.windows = 0

    def encode(self, features):
        return self.inner.encode(features)

    def generate(self, z, masks):
        self.windows += 1
        time.sleep(self.delay)
        return self.inner.generate(z, masks)


def run_network_loop(pipeline, messages, done, timeout=60.0, **options):
    """Start a NetworkLoop (ingress + stage threads), push ``messages`` to it, wait until
    ``done(loop, published)``; returns (loop, published headers)."""
    import threading

    from runtime.serve.engine import NetworkLoop
    from runtime.wire.protocol import Publisher

    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", pipeline.topic, pipeline.info())
    loop = NetworkLoop(pipeline, publisher, ctx, "tcp://127.0.0.1:*", **options)
    published: list[dict] = []
    publish = publisher.publish
    publisher.publish = lambda parts, *header: (published.append(json.loads(parts[1])),
                                                publish(parts, *header))
    push = ctx.socket(zmq.PUSH)
    stop = threading.Event()
    runner = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    try:
        push.connect(loop.address)
        runner.start()
        for parts in messages:
            push.send_multipart(parts)
        deadline = time.monotonic() + timeout
        while not done(loop, published):
            assert time.monotonic() < deadline, f"never done; published {published}"
            time.sleep(0.02)
    finally:
        stop.set()
        runner.join(5)
        push.close(linger=0)
        publisher.close()
        ctx.destroy(linger=0)
    assert not runner.is_alive()
    return loop, published


def test_network_loop_skips_to_the_newest_window_when_the_model_is_slow(export):
    from runtime.model.backends import open_translator
    from runtime.serve.pipeline import Pipeline
    from runtime.wire.protocol import encode_audio

    slow = SlowTranslator(open_translator(export, backend="onnxruntime-cpu"), delay=0.3)
    pipeline = Pipeline(slow, hop_seconds=0.25, encoding="raw")
    rate, block, seconds = pipeline.sample_rate, pipeline.sample_rate // 20, 4
    audio = np.full(seconds * rate, 0.25, np.float32)
    messages = [encode_audio("node", seq, audio[start:start + block], rate, 100.0 + start / rate)
                for seq, start in enumerate(range(0, len(audio), block))]   # 80 blocks at once

    def caught_up(loop, published):
        state = loop.ingress.streams.get("node")
        return (state is not None and state.ring.written == len(audio)
                and state.next_total > state.ring.written and len(published) == state.frames)

    loop, published = run_network_loop(pipeline, messages, caught_up)
    # 80 blocks queued behind a slow model: each batch takes the newest window of the stream;
    # the stale hops in between are skipped and counted, never queued.
    assert len(published) == loop.frames == slow.windows <= 4
    assert [h["seq"] for h in published] == list(range(len(published)))
    assert published[-1]["position_s"] == seconds          # the newest audio, not a stale hop
    assert loop.ingress.counters.skipped == 13 - len(published)   # every hop published or skipped


def test_network_loop_logs_and_ignores_malformed_audio(export, capsys):
    from runtime.model.backends import open_translator
    from runtime.serve.pipeline import Pipeline
    from runtime.wire.protocol import encode_audio

    pipeline = Pipeline(open_translator(export, backend="onnxruntime-cpu"), encoding="raw")
    rate = pipeline.sample_rate
    good = encode_audio("node", 0, np.full(rate, 0.25, np.float32), rate, 100.0)
    header = json.loads(good[1])
    malformed = [[b"audio", b"[1, 2, 3]", good[2]], [b"audio", b"not json", good[2]],
                 [b"audio", good[1]], [b"audio", good[1], good[2][:-2]]]
    for key, value in (("seq", "Infinity"), ("sample_rate", "NaN"), ("channels", "1e999"),
                       ("capture_time", "-Infinity"), ("sample_rate", "0")):
        malformed.append([b"audio", (json.dumps(header)[:-1] + f', "{key}": {value}}}').encode(),
                          good[2]])
    loop, _ = run_network_loop(pipeline, malformed + [good],
                               lambda loop, published: len(published) == 1)
    assert loop.ingress.counters.bad_messages == len(malformed) and loop.frames == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "should be a JSON object" in err and "not strict JSON: Infinity is not JSON" in err
    assert "'sample_rate' should be an integer in [8000, 192000]" in err


def test_idle_stdin_stops_cleanly_on_sigterm_and_sigint(export):
    """An idle --stdin pipe used to abort the interpreter at exit (fatal error, exit 134)."""
    for signum, code in ((signal.SIGTERM, 0), (signal.SIGINT, 130)):
        cli = CLI("s2i-stream", "--stdin", "--export", str(export), "--pub",
                  "tcp://127.0.0.1:*", stdin=subprocess.PIPE)
        try:
            cli.wait_line("publishing on " + ADDRESS)
            time.sleep(0.3)               # the reader thread waits on the idle pipe
            cli.signal(signum)
            assert cli.wait(15) == code, cli.stderr()
        finally:
            cli.kill()
        assert "shut down cleanly" in cli.stderr()
        assert "Fatal Python error" not in cli.stderr() and "Traceback" not in cli.stderr()


def test_realtime_file_shorter_than_a_window_gives_one_padded_frame(export, tmp_path):
    wav = write_tone_wav(tmp_path / "short.wav", 0.4, rate=16000, channels=1)
    cli = CLI("s2i-stream", "--file", str(wav), "--realtime", "--export", str(export),
              "--pub", "tcp://127.0.0.1:*", "--wait-subscribers", "1", "--stream-id", "short")
    try:
        address = cli.wait_line("waiting for 1 subscriber.* on " + ADDRESS).group(1)
        with Subscriber(address) as sub:
            sub.wait_ready(20)
            frame = sub.receive(20)
            assert frame is not None
            assert sub.receive(3) is None and sub.ended["short"]["reason"] == "end-of-file"
        assert cli.wait(20) == 0, cli.stderr()
    finally:
        cli.kill()
    assert frame.seq == 0 and frame.header["position_s"] == pytest.approx(0.4, abs=0.01)
    assert sub.ended["short"]["last_seq"] == 0
    assert "shorter than one 1-s window: published one zero-padded window" in cli.stderr()
    assert "published 1 frames" in cli.stderr()
