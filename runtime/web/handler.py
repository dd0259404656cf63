"""The small local web pages (the live viewer, the labelling page): a quiet request handler
that sends a whole body with the headers every answer carries."""

from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any

# The content type of every file the local pages serve (the viewer's page, the browser page).
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript",
                 ".mjs": "text/javascript", ".css": "text/css", ".json": "application/json",
                 ".wasm": "application/wasm", ".onnx": "application/octet-stream"}

class QuietHandler(BaseHTTPRequestHandler):
    """No log line per request (it would bury the page's URL); whole-body answers, each with
    the headers in ``extra_headers``."""

    extra_headers: dict[str, str] = {}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, obj: Any, status: int = HTTPStatus.OK) -> None:
        self.send_body(status, json.dumps(obj).encode(), "application/json")
