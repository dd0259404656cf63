"""s2i-view: frames written to a folder and shown live in a real headless Chromium."""

from __future__ import annotations

import json
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
    assert bad.returncode == 2 and "cannot connect" in bad.stderr
    assert not (tmp_path / "x").exists()
