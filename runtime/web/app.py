"""``s2i-web``: the translator in a web page (ONNX Runtime Web), built for an export as a
static folder and served on loopback.

    s2i-web                                   # the demo model, at http://127.0.0.1:8080/
    s2i-web --export runs/demo/export --port 0
    s2i-web --export runs/demo/export --out site/ --build-only    # for any static host

The folder holds the page (``runtime/web/page``), ONNX Runtime Web's files copied from
``node_modules/onnxruntime-web/dist`` (``npm ci``; nothing is fetched at run time), the
export's audio-in translator and ``config.json`` (sample rate, window, dropout list, model
file). The server sends the wasm MIME type and the cross-origin isolation headers that
WebAssembly threads need. docs/WEB.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from runtime.artifacts import atomic_dir, atomic_write_json, read_json
from runtime.cli import exit_code, log, stop_on_signals
from runtime.config import parse_config, switch
from runtime.errors import S2IError, run_cli
from runtime.frontend import FrontEndConfig
from runtime.model.manifest import load_export_manifest
from runtime.model.shipped import default_export
from runtime.web.handler import CONTENT_TYPES, QuietHandler
from runtime.web.server import IDLE_TIMEOUT_S, PageServer
from runtime.wire.security import is_loopback

PAGE = Path(__file__).parent / "page"
PAGE_FORMAT, PAGE_VERSION = "s2i-web", 1
# ONNX Runtime Web: the WebAssembly-only bundle (the default) and the JSEP bundle (WebGPU)
ORT_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm",
             "ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")
ORT_DIST = Path("node_modules") / "onnxruntime-web" / "dist"
# the audio-in translator (log-mel inside the graph) per precision, most preferred first
MODEL_KEYS = {"int8": "translator_audio_int8", "fp16": "translator_audio_fp16",
              "fp32": "translator_audio"}
AUDIO_INPUT, IMAGES_OUTPUT, UNCERTAINTY_OUTPUT = "audio", "images", "uncertainty"
# cross-origin isolation: SharedArrayBuffer, so WebAssembly threads
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin",
                     "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin"}


def find_ort_dist(given: str | Path | None = None) -> Path:
    """onnxruntime-web's ``dist`` folder: ``given``, ``$S2I_ORT_DIST``, or ``node_modules``
    beside the S2I checkout or in the working folder."""
    candidates = [Path(given)] if given else (
        [Path(os.environ["S2I_ORT_DIST"])] if os.environ.get("S2I_ORT_DIST") else
        [Path(__file__).resolve().parents[2] / ORT_DIST, Path.cwd() / ORT_DIST])
    for folder in candidates:
        if all((folder / name).is_file() for name in ORT_FILES):
            return folder
    raise S2IError(f"ONNX Runtime Web not found in {', '.join(map(str, candidates))}: run "
                   "`npm ci` in the S2I checkout (bash .ci/setup.sh does), or give --ort DIR "
                   "(onnxruntime-web's dist folder)")


def ort_version(dist: Path) -> str:
    package = dist.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"


def choose_model(manifest: dict[str, Any], precision: str, where: str) -> str:
    """The manifest key of the audio-in translator to ship: ``precision``'s, or under
    ``auto`` the smallest present (int8, fp16, fp32)."""
    models = manifest["models"]
    keys = list(MODEL_KEYS.values()) if precision == "auto" else [MODEL_KEYS[precision]]
    for key in keys:
        if key in models:
            return key
    raise S2IError(f"{where} has no audio-in translator ({' or '.join(keys)}); the page needs "
                   "the graph that takes audio (re-export with a current `python -m export`)")


def check_contract(entry: dict[str, Any], dropout: list[dict[str, Any]], key: str,
                   where: str) -> None:
    """The graph takes ``audio`` and every mask and gives ``images`` and ``uncertainty``."""
    inputs = {spec.get("name") for spec in entry.get("inputs", []) if isinstance(spec, dict)}
    outputs = {spec.get("name") for spec in entry.get("outputs", []) if isinstance(spec, dict)}
    needed_in = {AUDIO_INPUT, *(spec["input"] for spec in dropout)}
    needed_out = {IMAGES_OUTPUT, UNCERTAINTY_OUTPUT}
    if not needed_in <= inputs or not needed_out <= outputs:
        raise S2IError(f"{where}: model {key} should take {sorted(needed_in)} and give "
                       f"{sorted(needed_out)}; it takes {sorted(map(str, inputs))} and gives "
                       f"{sorted(map(str, outputs))}")


def check_out_dir(out_dir: Path) -> None:
    """``out_dir`` is replaced as a whole: it must be new, empty or an earlier page."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise S2IError(f"{out_dir} exists and is not a folder")
    if any(out_dir.iterdir()):
        try:
            earlier = read_json(out_dir / "config.json", "page config").get("format")
        except S2IError:
            earlier = None
        if earlier != PAGE_FORMAT:
            raise S2IError(f"{out_dir} is not empty and not an earlier s2i-web page; give a "
                           "new or empty folder")


def build_page(export_dir: str | Path, out_dir: str | Path, precision: str = "auto",
               ort_dist: str | Path | None = None) -> Path:
    """Write the page for ``export_dir`` into ``out_dir`` (replaced as a whole); returns it."""
    export_dir, out_dir = Path(export_dir), Path(out_dir)
    where = f"{export_dir}/manifest.json"
    manifest = load_export_manifest(export_dir)       # hashes and stamps checked
    key = choose_model(manifest, precision, where)
    entry = manifest["models"][key]
    check_contract(entry, manifest["dropout"], key, where)
    dist = find_ort_dist(ort_dist)
    check_out_dir(out_dir)
    front_end = FrontEndConfig.from_dict(manifest["front_end"])
    model_name = Path(entry["file"]).name
    checkpoint = manifest.get("checkpoint", {})
    config = {
        "format": PAGE_FORMAT, "version": PAGE_VERSION,
        "title": f"{export_dir.name}: {key} ({entry.get('precision', '?')}), "
                 f"epoch {checkpoint.get('epoch', '?')}, D = {manifest.get('embedding_dim')}",
        "sample_rate": front_end.sample_rate, "n_samples": front_end.n_samples,
        "dropout": [{"input": s["input"], "p": float(s["p"]), "channels": int(s["channels"])}
                    for s in manifest["dropout"]],
        "model": {"file": f"model/{model_name}", "key": key, "sha256": entry["sha256"],
                  "precision": entry.get("precision"), "audio_input": AUDIO_INPUT,
                  "images_output": IMAGES_OUTPUT, "uncertainty_output": UNCERTAINTY_OUTPUT},
        "classes": manifest.get("classes"),
        "onnxruntime_web": ort_version(dist),
    }
    with atomic_dir(out_dir) as tmp:
        for item in PAGE.iterdir():
            if item.suffix in CONTENT_TYPES:
                shutil.copyfile(item, tmp / item.name)
        (tmp / "ort").mkdir()
        for name in ORT_FILES:
            shutil.copyfile(dist / name, tmp / "ort" / name)
        (tmp / "model").mkdir()
        shutil.copyfile(export_dir / entry["file"], tmp / "model" / model_name)
        atomic_write_json(tmp / "config.json", config)
    return out_dir


def page_size(root: Path, ep: str = "wasm") -> dict[str, int]:
    """Bytes the page downloads with the ``wasm`` or ``webgpu`` bundle (every file it loads)."""
    ort = (["ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"]
           if ep == "wasm" else
           ["ort.min.mjs", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm"])
    config = read_json(root / "config.json", "page config")
    files = {"page": [p for p in root.iterdir() if p.is_file()],
             "onnxruntime_web": [root / "ort" / name for name in ort],
             "model": [root / config["model"]["file"]]}
    sizes = {part: sum(p.stat().st_size for p in paths) for part, paths in files.items()}
    return {**sizes, "total": sum(sizes.values())}


def make_static_handler(root: Path, timeout_s: float = IDLE_TIMEOUT_S
                        ) -> type[BaseHTTPRequestHandler]:
    """Serves the files under ``root`` (known types only, nothing outside it), each answer
    with the cross-origin isolation headers."""
    root = root.resolve()

    class Handler(QuietHandler):
        timeout = timeout_s
        extra_headers = ISOLATION_HEADERS

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            relative = unquote(self.path.split("?")[0].split("#")[0]).lstrip("/")
            path = (root / (relative or "index.html")).resolve()
            if path.is_relative_to(root) and path.suffix in CONTENT_TYPES and path.is_file():
                self.send_body(200, path.read_bytes(), CONTENT_TYPES[path.suffix])
                return
            self.send_body(404, b"not found", "text/plain")

    return Handler


@contextlib.contextmanager
def serving(root: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve the page folder ``root`` in a thread; yields its URL."""
    try:
        httpd = PageServer((host, port), make_static_handler(root))
    except (OSError, OverflowError) as exc:
        raise S2IError(f"cannot serve the page on {host}:{port}: "
                       f"{getattr(exc, 'strerror', None) or exc}") from exc
    try:
        threading.Thread(target=httpd.serve_forever, name="s2i-web", daemon=True).start()
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()


def serve(root: Path, host: str, port: int) -> int:
    with serving(root, host, port) as url:
        log(f"web page at {url}")
        if not is_loopback(f"tcp://{host}:1"):
            log(f"warning: the page on {host} is open to the network (plain HTTP: browsers "
                "allow the microphone only on https or localhost)")
        with stop_on_signals() as stop:
            while not stop.wait(0.5):
                pass
            return exit_code(stop)


@dataclass
class WebConfig:
    """``s2i-web``'s settings."""

    export: str = field(default_factory=default_export, metadata={
        "help": "export folder with an audio-in translator (default: runs/demo/export when it "
                "exists, else the shipped demo model)"})
    precision: str = field(default="auto", metadata={
        "choices": ["auto", *MODEL_KEYS],
        "help": "which audio-in graph the page runs (default auto: the smallest)"})
    out: Path | None = field(default=None, metadata={
        "help": "folder to write the page to (default: a temporary folder)"})
    build_only: bool = switch("write the page (--out) and exit; any static host can serve "
                              "it")
    ort: Path | None = field(default=None, metadata={
        "help": "onnxruntime-web's dist folder (default: node_modules/onnxruntime-web/dist)"})
    host: str = field(default="127.0.0.1", metadata={"help": "page host (default: 127.0.0.1)"})
    port: int = field(default=8080, metadata={
        "help": "page port (default: 8080; 0 = any free port)"})


def web_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(WebConfig, sys.argv[1:] if argv is None else argv, "s2i-web",
                       "Build the S2I web page (ONNX Runtime Web) for an export and serve it "
                       "on this machine.")
    if cfg.build_only and cfg.out is None:
        raise S2IError("--build-only needs --out DIR (the folder to write the page to)")
    if not 0 <= cfg.port <= 65535:
        raise S2IError(f"--port must be in 0..65535, got {cfg.port}")
    with tempfile.TemporaryDirectory(prefix="s2i-web-") as tmp:
        out = build_page(cfg.export, cfg.out or Path(tmp) / "page", cfg.precision, cfg.ort)
        sizes = page_size(out)
        log(f"page written to {out} ({sizes['total'] / 1e6:.1f} MB with WebAssembly: model "
            f"{sizes['model'] / 1e6:.1f} MB)")
        if cfg.build_only:
            return 0
        return serve(out, cfg.host, cfg.port)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: web_main(argv))


if __name__ == "__main__":
    sys.exit(main())
