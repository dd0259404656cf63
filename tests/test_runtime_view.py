"""s2i-view: frames written to a folder and shown live in a real headless Chromium."""

from __future__ import annotations

import io
import json
import re
import signal
import time

import numpy as np
import pytest
from helpers_browser import chromium_driver
from helpers_runtime import CLI, run_cli, tiny_export, write_tone_wav
from PIL import Image

ADDRESS = r"(tcp://127\.0\.0\.1:\d+)"


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return tiny_export(tmp_path_factory)


def test_view_writes_frames_and_shows_them_in_a_browser(export, tmp_path):
    wav = write_tone_wav(tmp_path / "tone.wav", 1.5)
    out = tmp_path / "frames"
    stream = CLI("s2i-stream", "--file", str(wav), "--realtime", "--loop", "--export",
                 str(export), "--hop", "0.25", "--samples", "2", "--uncertainty",
                 "--pub", "tcp://127.0.0.1:*", "--wait-subscribers", "1")
    view = None
    try:
        address = stream.wait_line("waiting for 1 subscriber.* on " + ADDRESS).group(1)
        view = CLI("s2i-view", "--connect", address, "--out", str(out), "--web", "0")
        url = view.wait_line(r"view at (http://\S+)").group(1)
        with chromium_driver(tmp_path) as driver:
            driver.get(url)
            deadline = time.monotonic() + 30
            state = None
            while time.monotonic() < deadline:
                state = driver.execute_script(
                    "const imgs = [...document.querySelectorAll('#samples img')];"
                    "const unc = document.getElementById('uncertainty');"
                    "return {seq: document.getElementById('status').dataset.seq,"
                    " widths: imgs.map(i => i.complete ? i.naturalWidth : 0),"
                    " unc: unc.complete ? unc.naturalWidth : 0,"
                    " uncHidden: document.getElementById('uncertainty-box').hidden,"
                    " rows: document.querySelectorAll('#header tr').length};")
                if state["seq"] is not None and int(state["seq"]) >= 2 \
                        and state["widths"] == [96, 96] and state["unc"] == 96:
                    break
                time.sleep(0.1)
            assert state is not None and state["widths"] == [96, 96], state
            assert int(state["seq"]) >= 2 and not state["uncHidden"] and state["rows"] >= 5
            meters = driver.execute_script(
                "return {latency: document.getElementById('latency').textContent,"
                " level: document.getElementById('level').textContent,"
                " legend: document.getElementById('uncertainty-legend').textContent};")
            assert re.fullmatch(r"\d+ ms", meters["latency"]), meters
            assert "dBFS" in meters["level"] and "white = std" in meters["legend"], meters
            first = int(state["seq"])
            driver.execute_script("window.scrollTo(0, 0)")
            driver.save_screenshot(str(tmp_path / "view.png"))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:      # the page keeps up with the stream
                seq = driver.execute_script(
                    "return document.getElementById('status').dataset.seq")
                if int(seq) > first:
                    break
                time.sleep(0.1)
            assert int(seq) > first
        assert Image.open(tmp_path / "view.png").size[0] > 0
        view.signal(signal.SIGTERM)
        assert view.wait(15) == 0, view.stderr()
        stream.signal(signal.SIGTERM)
        assert stream.wait(15) == 0, stream.stderr()
    finally:
        stream.kill()
        if view is not None:
            view.kill()
    headers = sorted(out.glob("main_*.json"))
    assert len(headers) >= 3
    header = json.loads(headers[0].read_text())
    stem = headers[0].with_suffix("")
    for k in range(2):
        image = np.asarray(Image.open(f"{stem}_{k}.png"))
        assert image.shape == (96, 96, 3)
    assert np.asarray(Image.open(f"{stem}_uncertainty.png")).shape == (96, 96)
    assert header["samples"] == 2 and header["uncertainty"] is True


def test_view_needs_something_to_do(tmp_path):
    result = run_cli("s2i-view", "--connect", "tcp://127.0.0.1:5999")
    assert result.returncode == 2 and result.stderr.startswith("error: nothing to do")
    bad = run_cli("s2i-view", "--connect", "not-an-address", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "not a ZeroMQ endpoint" in bad.stderr
    assert not (tmp_path / "x").exists()


def _publish_until_received(publisher, parts_list, view, pattern: str) -> None:
    """Send ``parts_list`` again and again until s2i-view logs ``pattern`` (the slow joiner)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        publisher.poll_subscriptions(50)
        for parts in parts_list:
            publisher.publish(parts)
        if any(re.search(pattern, line) for line in view.stderr().splitlines()):
            return
    raise AssertionError("s2i-view never got the frames; stderr:\n" + view.stderr())


def test_view_skips_bad_frames_and_keeps_stream_ids_inside_out(tmp_path):
    import zmq

    from runtime.wire.protocol import Publisher, encode_frame

    ctx = zmq.Context()
    publisher = Publisher(ctx, "tcp://127.0.0.1:*", "s2i", {"backend": "test"})
    images = np.full((1, 8, 8, 3), 200, np.uint8)
    good = encode_frame("s2i", {"seq": 3, "stream": "../escaped"}, images, None, "png")
    corrupt = [good[0], good[1], b"not a png"]
    huge_int = [good[0], good[1].replace(b'"seq":3', b'"seq":' + b"9" * 5000)]  # ValueError
    nan = [good[0], good[1].replace(b'"seq":3', b'"seq":NaN'), *good[2:]]     # not JSON
    bad_end = [good[0], b'{"kind":"end","protocol":2,"stream":{"a":1}}']
    out = tmp_path / "deep" / "out"
    view = CLI("s2i-view", "--connect", publisher.address, "--out", str(out), "--count", "1")
    try:
        _publish_until_received(publisher, [huge_int, nan, bad_end, corrupt, good], view,
                                r"received 1 frames")
        assert view.wait(20) == 0, view.stderr()
    finally:
        view.kill()
        publisher.close()
        ctx.term()
    assert re.search(r"received 1 frames, skipped \d+ bad messages", view.stderr())
    assert "skipping a bad message from tcp://" in view.stderr()
    assert len(re.findall("skipping a bad message", view.stderr())) <= 4  # rate-limited
    assert "Traceback" not in view.stderr()
    assert sorted(p.name for p in out.iterdir()) == ["_escaped_000003.json",
                                                      "_escaped_000003_0.png"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]


def test_safe_stream_names():
    from runtime.apps.view import safe_stream_name

    assert safe_stream_name("../escaped") == "_escaped"
    assert safe_stream_name("node-a.1_x") == "node-a.1_x"
    assert safe_stream_name("/etc/passwd") == "_etc_passwd"
    assert safe_stream_name("..") == "main" and safe_stream_name("") == "main"
    assert safe_stream_name(None) == "None"


def test_web_page_serves_the_frame_it_asked_for(tmp_path):
    import threading
    import urllib.error
    import urllib.request
    from http.server import ThreadingHTTPServer

    from runtime.apps.view import LatestFrame, make_handler
    from runtime.wire.protocol import decode_frame, encode_frame

    latest = LatestFrame()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(latest))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    def get(path: str) -> bytes | int:
        try:
            with urllib.request.urlopen(base + path, timeout=10) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            return exc.code

    def frame(value: int):
        images = np.full((1, 8, 8, 3), value, np.uint8)
        return decode_frame(encode_frame("s2i", {"seq": value}, images, None, "raw"))

    try:
        for value in (10, 20, 30):
            latest.update(frame(value))
        state = json.loads(get("/latest.json"))
        assert state["number"] == 3 and state["images"] == ["/frame/3/0.png"]
        for number, value in ((3, 30), (2, 20)):      # the newest and the one before it
            body = get(f"/frame/{number}/0.png")
            assert isinstance(body, bytes), number
            assert np.asarray(Image.open(io.BytesIO(body)))[0, 0, 0] == value
        assert get("/frame/1/0.png") == 404            # no longer held
        assert get("/frame/4/0.png") == 404            # not yet received
        assert get("/frame/3/1.png") == 404 and get("/frame/3/uncertainty.png") == 404
        assert get("/frame/x/0.png") == 404
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_long_stream_id_still_gives_writable_file_names(tmp_path):
    from runtime.apps.view import MAX_NAME_CHARS, safe_stream_name, write_frame
    from runtime.wire.protocol import decode_frame, encode_frame

    long_ids = ["s" * 250, "s" * 249 + "t", "../" * 90]
    names = [safe_stream_name(s) for s in long_ids]
    assert len(set(names)) == 3 and all(len(n) <= MAX_NAME_CHARS for n in names)
    images = np.full((1, 8, 8, 3), 7, np.uint8)
    for sid in long_ids:
        write_frame(tmp_path, decode_frame(encode_frame("s2i", {"seq": 1, "stream": sid},
                                                        images, None, "png")))
    assert len(list(tmp_path.glob("*.png"))) == 3 and len(list(tmp_path.glob("*.json"))) == 3
    assert all(p.parent == tmp_path for p in tmp_path.iterdir())


def test_slow_and_idle_connections_do_not_starve_the_page():
    """Slowloris (a byte now and then) and idle connections, more of them than handler slots:
    before, each held a slot for 10 s per read and 0 of 45 polls were answered. Now they wait
    in the gate, without a slot, and are closed at the header deadline (as a whole)."""
    import socket
    import threading
    import urllib.request

    from runtime.apps.view import LatestFrame, make_handler
    from runtime.web.server import PageServer

    slots = 4
    httpd = PageServer(("127.0.0.1", 0), make_handler(LatestFrame(), timeout_s=3.0),
                       max_connections=slots, header_deadline_s=1.5)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = httpd.server_address[1]
    before = threading.active_count()
    slow, idle = [], []
    try:
        for _ in range(slots + 8):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET / HTTP/1.1\r\n")             # a request that never finishes
            slow.append(s)
            idle.append(socket.create_connection(("127.0.0.1", port)))
        for _ in range(10):                              # honest polls are all answered
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/latest.json",
                                        timeout=10) as r:
                assert json.loads(r.read())["number"] == 0
            for s in slow:                               # one more byte: no extra time
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            assert threading.active_count() - before <= slots
        for s in slow + idle:                            # all closed by the deadline
            s.settimeout(30)
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
        assert httpd.gate.closed >= 2 * (slots + 8) and httpd.refused == 0
    finally:
        for s in slow + idle:
            s.close()
        httpd.shutdown()
        httpd.server_close()


def test_the_gate_keeps_a_bounded_number_of_waiting_connections():
    import socket

    from runtime.web.server import RequestGate

    ready = []
    gate = RequestGate(lambda sock, address, head: ready.append((sock, head)), deadline_s=60,
                       max_pending=3)
    server = socket.create_server(("127.0.0.1", 0))
    clients, accepted = [], []
    try:
        for _ in range(5):
            clients.append(socket.create_connection(server.getsockname()))
            accepted.append(server.accept()[0])
            gate.add(accepted[-1], None)
        clients[4].sendall(b"GET /latest.json HTTP/1.0\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        while not ready and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [head for _, head in ready] == [b"GET /latest.json HTTP/1.0\r\nHost: x\r\n\r\n"]
        for client in clients[:2]:                       # the two oldest were closed
            client.settimeout(10)
            assert client.recv(10) == b""
        assert gate.closed == 2
    finally:
        gate.close()
        for s in clients + accepted:
            s.close()
        server.close()


def test_latest_json_is_always_strict_json():
    """A hostile uncertainty_scale (1e308, an int of 400 digits) made /latest.json carry
    Infinity (invalid JSON) or an OverflowError in the receive loop."""
    from runtime.apps.view import LatestFrame
    from runtime.wire.protocol import decode_frame, encode_frame

    images = np.full((2, 8, 8, 3), 100, np.uint8)
    unc = np.full((8, 8), 200, np.uint8)
    for scale in (1e308, 10**400, -0.5, "x", True, None):      # the wire's is 0.5
        parts = encode_frame("s2i", {"seq": 0}, images, unc, "raw")
        header = json.loads(parts[1])
        header["uncertainty_scale"] = scale
        parts[1] = json.dumps(header).encode()
        latest = LatestFrame()
        latest.update(decode_frame(parts))
        text = json.dumps(latest.state(), allow_nan=False)
        assert json.loads(text)["uncertainty_max_std"] is None


def test_uncertainty_is_stretched_for_the_page():
    from runtime.apps.view import LatestFrame
    from runtime.wire.protocol import decode_frame, encode_frame

    images = np.full((2, 8, 8, 3), 100, np.uint8)
    unc = np.zeros((8, 8), np.uint8)
    unc[2:4, 2:4] = 9                             # a std of ~9 grey levels: near black as sent
    latest = LatestFrame()
    latest.update(decode_frame(encode_frame("s2i", {"seq": 0}, images, unc, "png")))
    state = latest.state()
    shown = np.asarray(Image.open(io.BytesIO(latest.image(state["number"], "uncertainty"))))
    assert shown.max() == 255 and shown.min() == 0
    assert state["uncertainty_max_std"] == pytest.approx(9 / 255 * 0.5)
    assert state["received_time"] is not None and state["now"] >= state["received_time"]
