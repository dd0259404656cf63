"""``s2i-view``: subscribe to an S2I stream; write frames to a folder and/or show them live.

    s2i-view --connect tcp://127.0.0.1:5556 --web 8080        # open http://127.0.0.1:8080/
    s2i-view --connect tcp://127.0.0.1:5556 --out frames/ --count 20

The web page (runtime/web/static/) polls ``/latest.json`` and swaps in ``/frame/<n>/<k>.png``;
only the two newest frames are kept in memory. The page shows latency and input level, and the
uncertainty map stretched to its own maximum (the legend gives that maximum's std). The page
is served by ``runtime.web.server.PageServer``: a request is bounded as a whole, so slow or
idle connections never hold a slot that the page's polls need.

A refused handshake ends s2i-view with one line (exit 2); with ``--retry`` it is logged and
retried with backoff (``runtime.wire.client.ClientSocket``).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np

from runtime.artifacts import atomic_write_bytes
from runtime.cli import exit_code, log, stop_on_signals
from runtime.config import parse_config, switch
from runtime.errors import S2IError, run_cli
from runtime.web.handler import CONTENT_TYPES, QuietHandler
from runtime.web.server import IDLE_TIMEOUT_S, PageServer
from runtime.wire.client import Subscriber
from runtime.wire.images import png_bytes
from runtime.wire.protocol import DEFAULT_TOPIC, Frame
from runtime.wire.security import SECURITY_TITLE, ClientCurve, is_loopback

STATIC = Path(__file__).parents[1] / "web" / "static"
MAX_NAME_CHARS = 80       # stream-id part of a file name (a file name may have 255 bytes)


class LatestFrame:
    """The newest frames as PNG bytes, shared between the receive loop and the web server.

    The newest ``keep`` frames are held, so a page that read ``/latest.json`` just before a
    new frame came still gets the images it asked for.
    """

    def __init__(self, keep: int = 2) -> None:
        self._lock = threading.Lock()
        self.keep = keep
        self.number = 0
        self.header: dict[str, Any] | None = None
        self.received_time: float | None = None
        self.uncertainty_max_std: float | None = None
        self._held: dict[int, tuple[list[bytes], bytes | None]] = {}

    def update(self, frame: Frame) -> None:
        pngs = [png_bytes(img) for img in frame.images]
        unc, max_std = None, None
        if frame.uncertainty is not None:
            display, max_std = stretch_uncertainty(
                frame.uncertainty, frame.header.get("uncertainty_scale"))
            unc = png_bytes(display)
        with self._lock:
            self.number += 1
            self.header = frame.header
            self.received_time = time.time()
            self.uncertainty_max_std = max_std
            self._held[self.number] = (pngs, unc)
            for old in [n for n in self._held if n <= self.number - self.keep]:
                del self._held[old]

    def state(self) -> dict[str, Any]:
        with self._lock:
            n = self.number
            pngs, unc = self._held.get(n, ([], None))
            return {"number": n, "header": self.header, "received_time": self.received_time,
                    "now": time.time(),
                    "images": [f"/frame/{n}/{k}.png" for k in range(len(pngs))],
                    "uncertainty": f"/frame/{n}/uncertainty.png" if unc else None,
                    "uncertainty_max_std": self.uncertainty_max_std}

    def image(self, number: int, name: str) -> bytes | None:
        """Image ``name`` (``<k>`` or ``uncertainty``) of frame ``number``; None once dropped."""
        with self._lock:
            held = self._held.get(number)
            if held is None:
                return None
            pngs, unc = held
            if name == "uncertainty":
                return unc
            if name.isdigit() and int(name) < len(pngs):
                return pngs[int(name)]
            return None


def stretch_uncertainty(unc: np.ndarray, scale: Any) -> tuple[np.ndarray, float | None]:
    """The map stretched so its maximum is white (a std of a few grey levels would be near
    black at the wire's fixed scale); returns it and the std that white stands for."""
    top = int(unc.max())
    sane = isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale <= 1
    std = top / 255 * float(scale) if sane else None      # images in [0, 1]: std <= 0.5
    if top == 0:
        return unc, std
    return np.round(unc.astype(np.float32) * (255.0 / top)).astype(np.uint8), std


FRAME_PATH = re.compile(r"^/frame/(\d{1,18})/([A-Za-z0-9]+)\.png$")


def make_handler(latest: LatestFrame, timeout_s: float = IDLE_TIMEOUT_S
                 ) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        timeout = timeout_s           # socket timeout: idle or half-open requests end

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?")[0]
            if path == "/":
                path = "/index.html"
            if path == "/latest.json":
                self.send_body(200, json.dumps(latest.state(), allow_nan=False).encode(),
                               "application/json")
                return
            if match := FRAME_PATH.match(path):
                body = latest.image(int(match.group(1)), match.group(2))
                if body is not None:
                    self.send_body(200, body, "image/png")
                    return
            static = STATIC / path.lstrip("/")
            if "/" not in path.lstrip("/") and static.suffix in CONTENT_TYPES and static.is_file():
                self.send_body(200, static.read_bytes(), CONTENT_TYPES[static.suffix])
                return
            self.send_body(404, b"not found", "text/plain")

    return Handler


def safe_stream_name(stream: Any) -> str:
    """A stream id from the network made safe as part of a file name: no ``/``, no ``..``,
    at most ``MAX_NAME_CHARS`` (a long id keeps its start and a hash of the whole)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", str(stream)).lstrip(".") or "main"
    if len(name) > MAX_NAME_CHARS:
        digest = hashlib.sha256(str(stream).encode()).hexdigest()[:12]
        name = f"{name[:MAX_NAME_CHARS - 13]}-{digest}"
    return name


def write_frame(out_dir: Path, frame: Frame) -> None:
    stem = f"{safe_stream_name(frame.header.get('stream', 'main'))}_{frame.seq:06d}"
    for k, image in enumerate(frame.images):
        atomic_write_bytes(out_dir / f"{stem}_{k}.png", png_bytes(image))
    if frame.uncertainty is not None:
        atomic_write_bytes(out_dir / f"{stem}_uncertainty.png", png_bytes(frame.uncertainty))
    atomic_write_bytes(out_dir / f"{stem}.json",
                       (json.dumps(frame.header, indent=1) + "\n").encode())


@dataclass
class ViewConfig:
    """``s2i-view``'s settings."""

    connect: str = field(default="tcp://127.0.0.1:5556", metadata={
        "help": "the server's PUB address (default: tcp://127.0.0.1:5556)"})
    topic: str = DEFAULT_TOPIC
    out: Path | None = field(default=None, metadata={
        "help": "folder to write frames to (PNG + JSON header)"})
    web: int | None = field(default=None, metadata={
        "metavar": "PORT", "help": "serve a live page on http://HOST:PORT/ (0 = any free port)"})
    host: str = field(default="127.0.0.1", metadata={
        "help": "web page host (default: 127.0.0.1)"})
    count: int = field(default=0, metadata={"help": "stop after N frames (0 = never)"})
    newest_only: bool = switch("skip queued frames and show the newest (slow clients)")
    security: ClientCurve = field(default_factory=ClientCurve,
                                  metadata={"title": SECURITY_TITLE})


def view_main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ViewConfig, sys.argv[1:] if argv is None else argv, "s2i-view",
                       "Subscribe to an S2I stream; save frames and/or show them in a local "
                       "web page.")
    if cfg.out is None and cfg.web is None:
        raise S2IError("nothing to do: give --out DIR and/or --web PORT")
    keys = cfg.security.keys()
    latest = LatestFrame()
    httpd = None
    subscriber = Subscriber(cfg.connect, cfg.topic, newest_only=cfg.newest_only, keys=keys,
                            retry=cfg.security.retry)
    try:
        if cfg.out is not None:
            try:
                cfg.out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise S2IError(f"cannot create output folder {cfg.out}: "
                               f"{exc.strerror}") from exc
        if cfg.web is not None:
            try:
                httpd = PageServer((cfg.host, cfg.web), make_handler(latest))
            except (OSError, OverflowError) as exc:
                raise S2IError(f"cannot serve the web page on {cfg.host}:{cfg.web}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from exc
            threading.Thread(target=httpd.serve_forever, name="s2i-view-web",
                             daemon=True).start()
            log(f"view at http://{cfg.host}:{httpd.server_address[1]}/")
            if not is_loopback(f"tcp://{cfg.host}:1"):
                log(f"warning: the page on {cfg.host} is open to the network, without "
                    "authentication or encryption")
        with stop_on_signals() as stop:
            received = 0
            while not stop.is_set() and (cfg.count <= 0 or received < cfg.count):
                frame = subscriber.receive(timeout_s=0.1)   # bad messages: logged, skipped
                for sid in list(subscriber.ended):
                    end = subscriber.ended.pop(sid)
                    log(f"stream {safe_stream_name(sid)} ended ({str(end.get('reason'))[:40]!r}"
                        f", last seq {str(end.get('last_seq'))[:20]})")
                if frame is None:
                    continue
                received += 1
                if cfg.out is not None:
                    write_frame(cfg.out, frame)
                latest.update(frame)
            log(f"received {received} frames" + (f", skipped {subscriber.bad} bad messages"
                                                  if subscriber.bad else ""))
            return exit_code(stop)
    finally:
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        subscriber.close()


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: view_main(argv))


if __name__ == "__main__":
    sys.exit(main())
