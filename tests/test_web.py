"""s2i-web: the translator in a web page (ONNX Runtime Web), in a real headless Chromium whose
fake microphone plays a WAV file; images compared with ONNX Runtime in Python."""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf
from helpers_browser import browser_errors, chromium_driver
from helpers_export import shared_export
from helpers_runtime import tiny_export

from benchmarks.browser import MEMORY_FLAGS, REFUSED_MICROPHONE, fake_microphone
from export.ship import ship_export
from runtime.errors import S2IError
from runtime.model.backends import open_translator
from runtime.model.manifest import load_export_manifest
from runtime.model.masks import draw_masks
from runtime.model.shipped import SHIPPED_EXPORT, default_export
from runtime.web.app import ORT_FILES, build_page, find_ort_dist, page_size, serving
from runtime.web.app import main as web_cli

SIDE = 96
PLANE = 3 * SIDE * SIDE
# page vs Python ONNX Runtime on the same FP32 graph, audio and masks, images in [-1, 1]:
# at most 2e-3 (a quarter of a grey level; WebAssembly SIMD and x86 kernels round differently)
PARITY_TOLERANCE = 2e-3
READY_JS = """const done = arguments[arguments.length - 1];
s2i.ready.then((info) => done({ok: true, info}), (e) => done({ok: false, error: String(e)}));"""
STATE_JS = """const status = document.getElementById("status");
return {seq: Number(status.dataset.seq || 0), status: status.textContent,
        message: document.getElementById("message").hidden ? null :
                 document.getElementById("message").textContent,
        canvases: [...document.querySelectorAll("#samples canvas")].map((c) => c.width),
        uncertaintyHidden: document.getElementById("uncertainty-box").hidden,
        latency: document.getElementById("latency").textContent,
        level: document.getElementById("level").textContent};"""


def ort_or_skip():
    try:
        return find_ort_dist()
    except S2IError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    # fused + audio-in: translator_audio (the one test_backends.py and test_audio_graph.py read)
    return shared_export(tmp_path_factory, embedding_dim=64, fp16=True, fused=True,
                         input_sensitive=True)


@pytest.fixture(scope="module")
def page(export, tmp_path_factory):
    ort_or_skip()
    root = build_page(export, tmp_path_factory.mktemp("web-page") / "page", precision="fp32")
    with serving(root) as url:
        yield url, root


def write_wav(path, kind: str, seconds: float = 3.0, rate: int = 48000):
    t = np.arange(int(seconds * rate)) / rate
    if kind == "tone":
        audio = 0.3 * np.sin(2 * np.pi * 440 * t)
    else:                                                    # chirps in noise
        rng = np.random.default_rng(1)
        audio = 0.2 * rng.standard_normal(t.size) + 0.2 * np.sin(2 * np.pi * 3000 * t * (t % 1))
    sf.write(path, audio.astype(np.float32), rate, subtype="PCM_16")
    return path


def open_page(driver, url: str, query: str = "") -> dict:
    driver.set_script_timeout(120)
    driver.get(url + query)
    ready = driver.execute_async_script(READY_JS)
    assert ready["ok"], ready
    return ready["info"]


def run_microphone(driver, url: str | None, query: str, frames: int, timeout_s: float = 90
                   ) -> dict:
    """Open the page, press Start, wait until ``frames`` windows have been translated (or the
    page shows a message); returns the page state. ``url`` None: the page is running already,
    just wait."""
    if url is not None:
        open_page(driver, url, query)
        driver.find_element("id", "start").click()
    deadline = time.monotonic() + timeout_s
    state = driver.execute_script(STATE_JS)
    while time.monotonic() < deadline and state["seq"] < frames and not state["message"]:
        time.sleep(0.2)
        state = driver.execute_script(STATE_JS)
    return state


def last_images(driver) -> np.ndarray:
    images = driver.execute_script("return Array.from(s2i.last.images)")
    return np.asarray(images, np.float32).reshape(-1, 3, SIDE, SIDE)


# ----------------------------------------------------------------------------- the build


def test_build_writes_a_static_folder_served_with_isolation_headers(page):
    url, root = page
    config = json.loads((root / "config.json").read_text())
    assert config["format"] == "s2i-web" and config["sample_rate"] == 16000
    assert config["n_samples"] == 16000 and len(config["dropout"]) == 6
    assert (root / config["model"]["file"]).is_file()
    assert all((root / "ort" / name).is_file() for name in ORT_FILES)
    assert {"index.html", "app.js", "worker.js", "capture-worklet.js"} <= {
        p.name for p in root.iterdir()}
    sizes = page_size(root)
    assert sizes["total"] == sizes["page"] + sizes["onnxruntime_web"] + sizes["model"]
    with urllib.request.urlopen(url + "ort/ort-wasm-simd-threaded.wasm") as answer:
        assert answer.headers["Content-Type"] == "application/wasm"
        assert answer.headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert answer.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    for bad in ("../config.json", "%2e%2e/%2e%2e/etc/passwd", "nothing.js", "model"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url + bad)
        assert caught.value.code == 404


def test_build_refusals_are_one_line(export, tmp_path, tmp_path_factory, capsys):
    ort_or_skip()
    plain = tiny_export(tmp_path_factory)                   # not fused: no translator_audio
    with pytest.raises(S2IError, match="no audio-in translator"):
        build_page(plain, tmp_path / "page")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(S2IError, match="not empty and not an earlier s2i-web page"):
        build_page(export, busy)
    assert (busy / "notes.txt").read_text() == "mine"
    with pytest.raises(S2IError, match="ONNX Runtime Web not found"):
        build_page(export, tmp_path / "page", ort_dist=tmp_path)
    assert web_cli(["--export", str(export), "--build-only"]) == 2
    assert web_cli(["--export", str(tmp_path / "missing"), "--out", str(tmp_path / "p"),
                    "--build-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err
    assert web_cli(["--export", str(export), "--out", str(tmp_path / "site"),
                    "--build-only"]) == 0
    assert (tmp_path / "site" / "index.html").is_file()
    assert web_cli(["--export", str(export), "--out", str(tmp_path / "site"),
                    "--build-only"]) == 0                      # an earlier page is replaced


# ----------------------------------------------------------------------------- the page


def test_page_shows_frames_from_the_microphone(page, tmp_path):
    url, _ = page
    wav = write_wav(tmp_path / "tone.wav", "tone")
    with chromium_driver(tmp_path, flags=fake_microphone(wav)) as driver:
        state = run_microphone(driver, url, "?k=2&hop=0.25", frames=3)
        assert state["seq"] >= 3 and state["message"] is None, state
        assert state["canvases"] == [SIDE, SIDE] and not state["uncertaintyHidden"], state
        assert state["latency"].endswith(" ms") and "dBFS" in state["level"], state
        assert "rms -13" in state["level"], state        # a 0.3 sine: -13.5 dBFS
        images = last_images(driver)
        assert images.shape == (2, 3, SIDE, SIDE) and np.abs(images).max() <= 1 + 1e-5
        assert browser_errors(driver) == []
        driver.set_window_size(390, 844)                   # a phone: no sideways scrolling
        width = driver.execute_script("return [document.documentElement.scrollWidth, "
                                      "document.documentElement.clientWidth]")
        assert width[0] <= width[1], width


def test_two_sounds_give_different_images(page, tmp_path):
    """Deterministic masks (?mc=off): what changes the images is the sound alone."""
    url, _ = page
    images, levels = {}, {}
    for kind in ("tone", "noise"):
        wav = write_wav(tmp_path / f"{kind}.wav", kind)
        with chromium_driver(tmp_path, flags=fake_microphone(wav)) as driver:
            state = run_microphone(driver, url, "?k=1&hop=0.25&mc=off", frames=3)
            assert state["seq"] >= 3, state
            images[kind], levels[kind] = last_images(driver), state["level"]
    assert levels["tone"] != levels["noise"], levels
    different = np.abs(images["tone"] - images["noise"]).mean()
    assert different > 0.05, different          # 25x the parity tolerance, on average


def test_page_images_match_the_python_runtime(page, export):
    url, root = page
    config = json.loads((root / "config.json").read_text())
    rng = np.random.default_rng(5)
    t = np.arange(config["n_samples"]) / config["sample_rate"]
    audio = (0.3 * np.sin(2 * np.pi * 700 * t) + 0.05 * rng.standard_normal(t.size))
    audio = audio.astype(np.float32)
    k = 3
    masks = draw_masks(config["dropout"], k, np.random.default_rng(7))
    translator = open_translator(export, backend="onnxruntime-cpu", features="graph")
    images, _, uncertainty = translator.translate_window_audio(audio[None], masks)
    with chromium_driver(root.parent) as driver:
        open_page(driver, url)
        result = driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "s2i.translate(arguments[0], arguments[1], arguments[2]).then(done,"
            " (e) => done({error: String(e)}));",
            audio.tolist(), [m.ravel().tolist() for m in masks], k)
    assert "error" not in result, result
    page_images = np.asarray(result["images"], np.float32).reshape(images.shape)
    page_unc = np.asarray(result["uncertainty"], np.float32).reshape(uncertainty.shape)
    assert np.abs(images).mean() > 0.05 and np.abs(images[0] - images[1]).max() > 0.05
    assert np.abs(page_images - images).max() <= PARITY_TOLERANCE
    assert np.abs(page_unc - uncertainty).max() <= PARITY_TOLERANCE


def test_refused_microphone_gives_the_message_and_a_file_still_works(page, tmp_path):
    url, _ = page
    wav = write_wav(tmp_path / "file.wav", "noise", seconds=8.0, rate=44100)
    with chromium_driver(tmp_path, flags=REFUSED_MICROPHONE) as driver:
        state = run_microphone(driver, url, "?k=2&hop=0.5", frames=1, timeout_s=20)
        assert state["message"] is not None and "microphone was refused" in state["message"]
        assert state["seq"] == 0
        assert driver.find_element("id", "start").is_enabled()     # it can be tried again
        driver.find_element("id", "file").send_keys(str(wav))     # as a dropped file
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and driver.execute_script(STATE_JS)["seq"] < 2:
            time.sleep(0.2)
        state = driver.execute_script(STATE_JS)
        assert state["seq"] >= 2 and state["message"] is None, state
        assert state["canvases"] == [SIDE, SIDE]


def page_memory(driver, samples: int = 3) -> dict:
    """The least of a few readings (after a GC each): a reading can catch a result in flight."""
    readings = [driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "s2i.memory().then(done, (e) => done({error: String(e)}));") for _ in range(samples)]
    assert all("error" not in r for r in readings), readings
    return {key: min(r[key] for r in readings) for key in ("pageHeap", "wasmBytes")}


@pytest.mark.parametrize("windows", [   # hop 0.25 s of real-time audio: 30 s and 5 minutes
    pytest.param(120, id="120windows"), pytest.param(1200, id="5min", marks=pytest.mark.slow)])
def test_page_memory_does_not_grow(page, tmp_path, windows):
    """Counted in windows, not seconds: each window makes two 3x96x96 images (at least 27 KB
    each even as bytes), so keeping anything image-sized per window passes the 1 MiB allowance
    within the first 40 windows."""
    url, _ = page
    wav = write_wav(tmp_path / "noise.wav", "noise")
    with chromium_driver(tmp_path, flags=(*fake_microphone(wav), *MEMORY_FLAGS)) as driver:
        state = run_microphone(driver, url, "?k=2&hop=0.25", frames=8)
        assert state["seq"] >= 8, state
        start = page_memory(driver)
        first_seq = state["seq"]
        state = run_microphone(driver, None, "", frames=first_seq + windows,
                               timeout_s=60 + 2 * windows)     # a loaded machine: slower
        end = page_memory(driver)
        translated = driver.execute_script(STATE_JS)["seq"] - first_seq
    assert translated >= windows and state["message"] is None, state  # translating all along
    assert start["wasmBytes"] > 0                     # the worker's heap is really measured
    assert end["wasmBytes"] - start["wasmBytes"] <= 1 << 20, (start, end)
    assert end["pageHeap"] - start["pageHeap"] <= 1 << 20, (start, end)


def test_missing_onnxruntime_web_is_named(tmp_path, monkeypatch):
    dist = ort_or_skip()
    monkeypatch.setenv("S2I_ORT_DIST", str(tmp_path))
    with pytest.raises(S2IError, match="npm ci"):
        find_ort_dist()
    partial = tmp_path / "dist"
    partial.mkdir()
    for name in ORT_FILES:
        if not name.endswith(".wasm"):
            shutil.copyfile(dist / name, partial / name)
    with pytest.raises(S2IError, match="ONNX Runtime Web not found"):
        find_ort_dist(partial)


# ----------------------------------------------------------------------------- the shipped model


def test_ship_export_keeps_only_the_chosen_models(export, tmp_path):
    keys = ["encoder", "generator"]
    out = ship_export(export, keys, tmp_path / "shipped")
    manifest = load_export_manifest(out)                      # hashes and stamps hold
    assert sorted(manifest["models"]) == keys and manifest["shipped"]["models"] == keys
    assert sorted(p.name for p in out.iterdir()) == ["encoder.onnx", "generator.onnx",
                                                     "manifest.json"]
    with pytest.raises(S2IError, match="has no model nothing"):
        ship_export(export, ["nothing"], tmp_path / "other")


def test_the_shipped_model_is_the_default_without_a_trained_export(tmp_path, monkeypatch):
    if not (SHIPPED_EXPORT / "manifest.json").is_file():
        pytest.skip(f"no shipped model in {SHIPPED_EXPORT} (a source tree without it)")
    monkeypatch.chdir(tmp_path)
    assert default_export() == str(SHIPPED_EXPORT)
    manifest = load_export_manifest(SHIPPED_EXPORT)
    assert manifest["shipped"]["models"] and "translator_audio" in " ".join(manifest["models"])
    assert sum(p.stat().st_size for p in SHIPPED_EXPORT.iterdir()) < 8e6     # a few MB
    ort_or_skip()
    root = build_page(default_export(), tmp_path / "page")
    assert json.loads((root / "config.json").read_text())["model"]["key"] in manifest["models"]
    (tmp_path / "runs" / "demo" / "export").mkdir(parents=True)
    assert default_export() == "runs/demo/export"              # the user's own training wins
