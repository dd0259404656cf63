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

import argparse
import json
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from runtime.errors import S2IError
from runtime.manifest import atomic_write_json, read_json
from trainer.evaluate.sample import read_index

LABELS_FORMAT = "s2i-labels"
LABELS_VERSION = 1
LABELS_FILE = "labels.json"
INFORMATIVE = "informative"
NON_INFORMATIVE = "non-informative"
LABEL_VALUES = (INFORMATIVE, NON_INFORMATIVE)
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"label.html": "text/html; charset=utf-8",
                "label.js": "text/javascript; charset=utf-8",
                "label.css": "text/css; charset=utf-8"}


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def read_labels(folder: str | Path) -> dict[str, dict[str, Any]]:
    """``file -> {"label", "by", "time", ...}`` from ``folder/labels.json`` ({} if none yet)."""
    path = Path(folder) / LABELS_FILE
    if not path.exists():
        return {}
    data = read_json(path, "labels file")
    if data.get("format") != LABELS_FORMAT or not isinstance(data.get("labels"), dict):
        raise S2IError(f"{path} is not an S2I labels file (expected format {LABELS_FORMAT!r})")
    for file, entry in data["labels"].items():
        if not isinstance(entry, dict) or entry.get("label") not in LABEL_VALUES:
            raise S2IError(f"{path}: entry {file!r} has no valid label (expected one of "
                           f"{', '.join(LABEL_VALUES)})")
    return data["labels"]


class LabelBook:
    """The labels of one samples folder; every change is written at once (atomically)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.index = read_index(self.folder)
        self.files = [item["file"] for item in self.index["items"]]
        self.known = set(self.files)
        self.served = self.known | {item["real"] for item in self.index["items"] if item["real"]}
        self.labels = read_labels(self.folder)
        self.lock = threading.Lock()

    def set(self, file: str, label: str | None, by: str = "person",
            extra: dict[str, Any] | None = None) -> None:
        """Give ``file`` a label (None clears it) and save."""
        self.update({file: None if label is None else {"label": label, "by": by,
                                                       **(extra or {})}})

    def update(self, changes: dict[str, dict[str, Any] | None]) -> None:
        """Apply several changes (``file -> entry`` or None to clear), then save once.
        The labels in memory change only once the file is written (all or nothing)."""
        with self.lock:
            labels = dict(self.labels)
            for file, entry in changes.items():
                if file not in self.known:
                    raise S2IError(f"{file!r} is not an image of {self.folder}/index.json")
                if entry is None:
                    labels.pop(file, None)
                    continue
                if entry.get("label") not in LABEL_VALUES:
                    raise S2IError(f"label for {file!r} must be one of {', '.join(LABEL_VALUES)}"
                                   f", got {entry.get('label')!r}")
                labels[file] = {"time": now_utc(), **entry}
            atomic_write_json(self.folder / LABELS_FILE,
                              {"format": LABELS_FORMAT, "version": LABELS_VERSION,
                               "labels": labels})
            self.labels = labels

    def counts(self) -> dict[str, int]:
        with self.lock:
            values = [e["label"] for f, e in self.labels.items() if f in self.known]
        return {"total": len(self.files), "labelled": len(values),
                INFORMATIVE: values.count(INFORMATIVE),
                NON_INFORMATIVE: values.count(NON_INFORMATIVE)}

    def state(self) -> dict[str, Any]:
        with self.lock:
            labels = {f: e["label"] for f, e in self.labels.items() if f in self.known}
        items = [{k: it[k] for k in ("file", "sound_id", "class", "epoch", "sample", "real",
                                     "model")} for it in self.index["items"]]
        return {"items": items, "labels": labels, "split": self.index.get("split")}


def make_handler(book: LabelBook) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "s2i-label"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            pass  # quiet: one line per image would bury the URL

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, obj: Any, status: int = HTTPStatus.OK) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - stdlib name
            path = unquote(self.path.split("?", 1)[0])
            if path in ("/", "/index.html"):
                path = "/static/label.html"
            if path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            elif path == "/api/state":
                self._json(book.state())
            elif path.startswith("/static/") and path[8:] in STATIC_FILES:
                name = path[8:]
                self._send(HTTPStatus.OK, (STATIC_DIR / name).read_bytes(), STATIC_FILES[name])
            elif path.startswith("/files/") and path[7:] in book.served:
                self._send(HTTPStatus.OK, (book.folder / path[7:]).read_bytes(), "image/png")
            else:
                self._json({"error": f"not found: {path}"}, HTTPStatus.NOT_FOUND)

        def do_POST(self) -> None:  # noqa: N802 - stdlib name
            if self.path != "/api/label":
                self._json({"error": f"not found: {self.path}"}, HTTPStatus.NOT_FOUND)
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                book.set(str(body.get("file")), body.get("label"))
            except (ValueError, S2IError) as exc:
                self._json({"error": str(exc)}, HTTPStatus.BAD_REQUEST)
                return
            except OSError as exc:
                self._json({"error": f"could not save labels: {exc}"},
                           HTTPStatus.INTERNAL_SERVER_ERROR)
                return
            self._json(book.counts())

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer label",
                                description="Label generated images as informative or not.")
    p.add_argument("folder", help="samples folder written by `python -m trainer sample`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--auto", action="store_true", help="label automatically with a classifier "
                   "trained on the store's real images (demo set; no person needed)")
    p.add_argument("--store", help="store with real images (for --auto)")
    p.add_argument("--threshold", type=float, default=0.5, help="--auto: informative when the "
                   "real-image classifier gives the sound's class at least this probability")
    p.add_argument("--epochs", type=int, default=8, help="--auto: epochs for the real-image "
                   "classifier")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
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
