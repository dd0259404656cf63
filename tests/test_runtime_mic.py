"""A real PyAudio capture path without a microphone: a private PulseAudio server whose null
sink's monitor is the default source; a file played into the sink reaches s2i-stream --mic
(PyAudio -> PortAudio -> ALSA pulse plugin) and s2i-capture --mic."""

from __future__ import annotations

import signal

import pytest
from helpers_pulse import null_sink_server
from helpers_runtime import CLI, run_cli, tiny_export, write_tone_wav

from runtime.errors import S2IError
from runtime.wire.client import Subscriber

pytest.importorskip("pyaudio", reason="PyAudio is not installed (pip install s2i[mic])")
ADDRESS = r"(tcp://127\.0\.0\.1:\d+)"


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    try:
        with null_sink_server(tmp_path_factory.mktemp("pulse")) as server:
            yield server
    except S2IError as exc:
        pytest.skip(f"PulseAudio could not start here: {exc}")


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def test_devices_are_listed_and_chosen_by_name_or_index(pulse, export):
    listed = run_cli("s2i-stream", "--list-devices", env=pulse.env)
    assert listed.returncode == 0, listed.stderr
    assert "[default]" in listed.stdout and "pulse" in listed.stdout
    bad = run_cli("s2i-stream", "--mic", "--device", "987", "--export", str(export),
                  env=pulse.env)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1, bad.stderr
    assert "unknown input device index 987" in lines[0] and "pulse" in lines[0]


def test_microphone_through_pulseaudio_null_sink(pulse, export, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 2.5, rate=48000, amplitude=0.8)
    cli = CLI("s2i-stream", "--mic", "--device", "pulse", "--export", str(export),
              "--hop", "0.5", "--samples", "2", "--pub", "tcp://127.0.0.1:*",
              "--wait-subscribers", "1", env=pulse.env)
    try:
        address = cli.wait_line("waiting for 1 subscriber.* on " + ADDRESS).group(1)
        with Subscriber(address) as sub:
            sub.wait_ready(20)
            quiet = sub.receive(20)              # the sink plays nothing yet: silence is fine
            assert quiet is not None and quiet.header["peak"] < 0.01
            player = pulse.play(wav)
            peaks = []
            while len(peaks) < 12 and max(peaks, default=0) < 0.3:
                frame = sub.receive(10)
                assert frame is not None, cli.stderr()
                assert len(frame.images) == 2 and frame.images[0].shape == (96, 96, 3)
                peaks.append(frame.header["peak"])
            assert player.wait(20) == 0
            assert max(peaks) > 0.3, peaks       # the played tone came through PyAudio
        cli.signal(signal.SIGTERM)
        assert cli.wait(15) == 0, cli.stderr()
    finally:
        cli.kill()
    assert "shut down cleanly" in cli.stderr() and "Traceback" not in cli.stderr()


def test_capture_node_on_the_microphone(pulse, export, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 2.0, rate=44100, amplitude=0.8)
    server = CLI("s2i-serve", "--export", str(export), "--bind", "tcp://127.0.0.1:*",
                 "--pub", "tcp://127.0.0.1:*", "--hop", "0.5")
    capture = None
    try:
        audio, pub = server.wait_line(f"serving on {ADDRESS} -> {ADDRESS}").groups()
        with Subscriber(pub) as sub:
            sub.wait_ready(20)
            capture = CLI("s2i-capture", "--mic", "--connect", audio, "--stream-id", "mic-node",
                          env=pulse.env)
            capture.wait_line("capturing")
            player = pulse.play(wav)
            peaks = []
            while len(peaks) < 12 and max(peaks, default=0) < 0.3:
                frame = sub.receive(10)
                assert frame is not None, server.stderr() + capture.stderr()
                assert frame.header["stream"] == "mic-node"
                peaks.append(frame.header["peak"])
            player.wait(20)
            assert max(peaks) > 0.3, peaks
        capture.signal(signal.SIGINT)
        assert capture.wait(15) == 130, capture.stderr()
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0, server.stderr()
    finally:
        server.kill()
        if capture is not None:
            capture.kill()
