"""s2i-capture checks its values with the server's own rules before it starts (it used to send
what the server refuses and exit 0, "0 unsent"), makes its default stream id valid, and does
not claim success when no server took its audio."""

from __future__ import annotations

import socket

import pytest
from helpers_runtime import run_cli, write_tone_wav

from runtime.apps.capture import default_stream_id
from runtime.errors import S2IError
from runtime.wire.protocol import check_audio_values


def test_values_the_server_refuses_are_one_line_errors(tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 0.5)
    for args, words in [(["--stream-id", "kitchen node"], "'stream'"),
                        (["--stream-id", "k" * 65], "'stream'"),
                        (["--stream-id", "küche"], "'stream'"),
                        (["--send-rate", "4000"], "'sample_rate'"),
                        (["--send-rate", "400000"], "'sample_rate'")]:
        result = run_cli("s2i-capture", "--file", str(wav), "--connect", "tcp://127.0.0.1:9",
                         *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1, (args, result.stderr)
        assert lines[0].startswith("error: the server would refuse this audio:"), lines
        assert words in lines[0] and "--stream-id and --send-rate" in lines[0], lines


def test_the_default_stream_id_is_always_valid():
    for host in ("gpu-box", "k" * 200, "küche.local", "host name with spaces", ""):
        sid = default_stream_id(host)
        check_audio_values(sid, 16000)               # the server's rules
        assert sid.startswith("capture-") and len(sid) <= 64
    assert default_stream_id("küche.local") == "capture-k-che.local"
    with pytest.raises(S2IError, match="'stream'"):
        check_audio_values("a/b", 16000)


def test_no_server_is_not_success(tmp_path):
    with socket.socket() as probe:                   # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    wav = write_tone_wav(tmp_path / "tone.wav", 0.5)
    result = run_cli("s2i-capture", "--file", str(wav), "--connect", f"tcp://127.0.0.1:{port}",
                     "--stream-id", "alone")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: no audio reached a server")
