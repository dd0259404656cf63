"""``python -m trainer label DIR``: a local web page to label generated images.

The page (``trainer/evaluate/static/label.html``) shows the images of a samples folder (written by
``python -m trainer sample``) one after another, with the sound's class and the real frame
when the store had one. Keys: ``i`` / right arrow = informative, ``n`` / left arrow =
non-informative, ``u`` / Backspace = back one image and clear its label. Every label is
POSTed as it is given and written atomically to ``DIR/labels.json``, so a person can stop
at any time and go on later: the page reopens at the first unlabelled image.

``python -m trainer label DIR --auto --store S`` labels without a person (see
``trainer.evaluate.autolabel``), in the same file; labels a person gave are never replaced.

labels.json::

    {"format": "s2i-labels", "version": 1,
     "labels": {"images/m0_e0005/c001_s00012_w003_k0.png":
                {"label": "informative", "by": "person", "time": "2026-...Z"}, ...}}
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from runtime.config import parse_config
from runtime.errors import S2IError
from runtime.web.handler import QuietHandler
from trainer.evaluate.sample_files import LabelBook

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"label.html": "text/html; charset=utf-8",
                "label.js": "text/javascript; charset=utf-8",
                "label.css": "text/css; charset=utf-8"}


def make_handler(book: LabelBook) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        server_version = "s2i-label"

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = unquote(self.path.split("?", 1)[0])
            if path in ("/", "/index.html"):
                path = "/static/label.html"
            if path == "/favicon.ico":
                self.send_body(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif path == "/api/state":
                self.send_json(book.state())
            elif path.startswith("/static/") and path[8:] in STATIC_FILES:
                name = path[8:]
                self.send_body(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), STATIC_FILES[name])
            elif path.startswith("/files/") and path[7:] in book.served:
                self.send_body(HTTPStatus.OK, (book.folder / path[7:]).read_bytes(), "image/png")
            else:
                self.send_json({"error": f"not found: {path}"}, HTTPStatus.NOT_FOUND)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            if self.path != "/api/label":
                self.send_json({"error": f"not found: {self.path}"}, HTTPStatus.NOT_FOUND)
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                book.set(str(body.get("file")), body.get("label"))
            except (ValueError, S2IError) as exc:
                self.send_json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
                return
            except OSError as exc:
                self.send_json({"error": f"could not save labels: {exc}"},
                           HTTPStatus.INTERNAL_SERVER_ERROR)
                return
            self.send_json(book.counts())

    return Handler


class LabelServer:
    """The labelling page for one folder, served on a background thread."""

    def __init__(self, folder: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.book = LabelBook(folder)
        try:
            self.httpd = ThreadingHTTPServer((host, port), make_handler(self.book))
        except OSError as exc:
            raise S2IError(f"cannot serve the labelling page on {host}:{port}: "
                           f"{exc.strerror}") from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> LabelServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass
class LabelConfig:
    """What ``python -m trainer label`` is told."""

    folder: str = field(metadata={
        "positional": True, "help": "samples folder written by `python -m trainer sample`"})
    host: str = "127.0.0.1"
    port: int = field(default=8765, metadata={"help": "0 picks a free port"})
    auto: bool = field(default=False, metadata={
        "help": "label automatically with a classifier trained on the store's real images "
                "(demo set; no person needed)"})
    store: str | None = field(default=None, metadata={"help": "store with real images "
                                                               "(for --auto)"})
    threshold: float = field(default=0.5, metadata={
        "help": "--auto: informative when the real-image classifier gives the sound's class "
                "at least this probability"})
    epochs: int = field(default=8, metadata={
        "help": "--auto: epochs for the real-image classifier"})
    seed: int = 0


def main(argv: list[str]) -> int:
    args = parse_config(LabelConfig, argv, "python -m trainer label",
                        "Label generated images as informative or not.")
    if args.auto:
        from trainer.evaluate.autolabel import auto_label  # torch only needed here
        if not args.store:
            raise S2IError("--auto needs --store STORE (a store with real images)")
        summary = auto_label(args.folder, args.store, threshold=args.threshold,
                             epochs=args.epochs, seed=args.seed)
        print(json.dumps(summary, indent=2))
        return 0
    server = LabelServer(args.folder, args.host, args.port).start()
    counts = server.book.counts()
    print(f"labelling {args.folder}: {counts['labelled']}/{counts['total']} labelled so far")
    print(f"open {server.url} (keys: i = informative, n = non-informative, u = back); "
          "Ctrl-C to stop: every label is already saved")
    try:
        server.thread.join()
    finally:
        server.stop()
    return 0
