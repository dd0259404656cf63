"""``ClusterTranslator``: the front's side of the S2I Serve deployment.

It is a ``runtime.model.translator.Translator`` (``manifest``, ``dropout``, ``backend``,
``features`` and ``translate_batch``: B windows, K masks each, the call the batched pipeline
uses) with the local translator's ``embedding_dim``, ``encode``, ``generate``, ``translate`` and
``translate_window`` besides: ONE call per batch through a Serve ``DeploymentHandle`` held by
a bridge process (runtime.cluster.bridge).

Faults never raise out of the front's loop as anything but ``ClusterUnavailable`` (an
``S2IError``): the windows of that call are dropped and counted by the caller, and the stream
goes on. When the bridge or the cluster is lost, the client logs one line, reconnects in the
background with backoff (1, 2, 4, 8, then every 15 s) and logs again when the cluster is back.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from runtime.cli import RateLimitedLog, log
from runtime.cluster.wire import (
    check_images,
    check_info,
    check_reply,
    make_request,
    parse_cluster,
)
from runtime.errors import S2IError

BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 15.0)
_RAY_ERROR = re.compile(r"error|fail|refused|unauthenticated|denied|timed? ?out", re.I)
_RAY_AUTH = re.compile(r"auth|token", re.I)
_RAY_PREFIX = re.compile(r"^\[[^]]*\] \S+:\d+: ")      # "[date W pid tid] file.cc:210: "


def _loopback(address: str) -> bool:
    host = address.split("://")[-1].rpartition(":")[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A TCP connect to ``HOST:PORT`` first: an unreachable head is one line in seconds, not
    a minute of Ray retrying (``auto`` finds a local cluster itself and is not checked)."""
    host, sep, port = address.split("://")[-1].rpartition(":")
    if not sep or not port.isdigit():
        if address != "auto":
            raise S2IError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout_s).close()
    except OSError as exc:
        raise S2IError(f"cannot reach the Ray cluster at {address}: "
                       f"{exc.strerror or type(exc).__name__} (is `ray start --head` running "
                       "there, and is the port open to this machine?)") from None


class ClusterUnavailable(S2IError):
    """The call's windows were not translated (cluster lost, reconnecting, or a replica failed
    twice); the caller drops them and goes on."""


class _Bridge:
    """One bridge child process and its pipe."""

    def __init__(self, address: str, app: str, call_timeout_s: float) -> None:
        # A fresh interpreter (not a fork of a process holding zmq/ORT threads, and not a
        # multiprocessing spawn that re-imports the front's __main__), joined by a socket pair.
        ours, theirs = socket.socketpair()
        env = dict(os.environ)
        if _loopback(address):
            # Ray 2.60 rewrites 127.0.0.1 to the host's network address unless told not to; a
            # loopback cluster (python -m runtime.cluster.local) listens on 127.0.0.1 only.
            env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime.cluster.bridge", str(theirs.fileno()), address, app,
             str(call_timeout_s)], pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
            start_new_session=True,   # Ctrl-C reaches the front only; the bridge ends on EOF
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        theirs.close()
        self.conn = Connection(ours.detach())
        self.info: dict[str, Any] | None = None
        self.started = time.monotonic()
        # Ray's own messages (C++ warnings, reconnect attempts...) would flood the front's log:
        # the last few are kept to name the cause when connecting fails (S2I_RAY_DEBUG=1
        # also copies every one to the front's stderr).
        self.ray_lines: deque[str] = deque(maxlen=40)
        self._reader = threading.Thread(target=self._read_stderr, name="s2i-ray-stderr",
                                        daemon=True)
        self._reader.start()

    def _read_stderr(self) -> None:
        debug = bool(os.environ.get("S2I_RAY_DEBUG"))
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line.strip():
                self.ray_lines.append(line)
                if debug:
                    print(line, file=sys.stderr, flush=True)
        self.process.stderr.close()

    def _exited(self) -> str:
        self._reader.join(1.0)            # Ray's last words
        cause = self.ray_cause()
        return "the Ray bridge process exited while connecting" + (f": {cause}" if cause else "")

    def ray_cause(self) -> str:
        """Ray's last error-looking line from the bridge (one line, at most 300 characters),
        with a hint when it is about authentication; '' when Ray said nothing."""
        lines = list(self.ray_lines)
        errors = [x for x in lines if _RAY_ERROR.search(x)] or lines
        if not errors:
            return ""
        cause = " ".join(_RAY_PREFIX.sub("", errors[-1]).split())[:300]
        if any(_RAY_AUTH.search(x) for x in lines):
            cause += (" (token authentication: give this front the cluster's token, "
                      "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; "
                      "docs/SCALING.md)")
        return cause

    def poll_ready(self, timeout: float) -> dict[str, Any] | None:
        """The deployment's info once connected; None while connecting; S2IError on failure."""
        if self.info is not None:
            return self.info
        try:
            if not self.conn.poll(timeout):
                if self.process.poll() is not None:
                    raise S2IError(self._exited())
                return None
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            raise S2IError(self._exited()) from None
        if kind != "ready":
            try:
                self.process.wait(2.0)    # Ray's last words reach the pipe before it exits
            except subprocess.TimeoutExpired:
                pass
            self._reader.join(1.0)
            cause = self.ray_cause()
            raise S2IError(str(value) + (f" ({cause})" if cause else ""))
        self.info = value
        return value

    def call(self, method: str, payload: Any, timeout: float) -> tuple[str, Any]:
        try:
            self.conn.send((method, payload))
            if not self.conn.poll(timeout):
                return "lost", f"no answer from the Ray bridge within {timeout:g} s"
            return self.conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            return "lost", "the Ray bridge process exited (cluster connection lost)"

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.conn.close()


class ClusterTranslator:
    """A ``runtime.model.translator.Translator`` whose model runs in a Ray Serve deployment."""

    def __init__(self, address: str, app: str, call_timeout_s: float = 10.0,
                 connect_timeout_s: float = 60.0) -> None:
        self.address, self.app = address, app
        self.call_timeout_s = float(call_timeout_s)
        self.where = f"Ray cluster {address} application '{app}'"
        check_reachable(address)
        self._bridge: _Bridge | None = _Bridge(address, app, self.call_timeout_s)
        deadline = time.monotonic() + connect_timeout_s
        try:
            info = None
            while info is None:
                if time.monotonic() > deadline:
                    cause = self._bridge.ray_cause() or "Ray said nothing"
                    raise S2IError(f"cannot reach the Ray cluster at {address} within "
                                   f"{connect_timeout_s:g} s: {cause} (S2I_RAY_DEBUG=1 shows "
                                   "all of Ray's messages)")
                info = self._bridge.poll_ready(0.2)
            info = check_info(info, self.where)
        except BaseException:
            self._bridge.close()
            raise
        self.info = info
        self.manifest: dict[str, Any] = info["manifest"]
        self.dropout: list[dict[str, Any]] = list(self.manifest["dropout"])
        self.embedding_dim = int(self.manifest["embedding_dim"])
        self.precision = str(info.get("precision", "fp32"))
        self.backend = f"ray:{app}/{info.get('backend', '?')}"
        self.features = "host"    # the deployment takes log-mel spectrograms
        self.calls = self.dropped_calls = self.retried_calls = self.reconnects = 0
        self._say = RateLimitedLog()
        self._failures = 0
        self._retry_at = 0.0

    def __repr__(self) -> str:
        return f"ClusterTranslator({self.address}/{self.app}, backend={self.backend!r})"

    # --- the connection ------------------------------------------------------------------

    def _lost(self, why: str) -> ClusterUnavailable:
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S) - 1)]
        self._failures += 1
        self._retry_at = time.monotonic() + delay
        log(f"cluster {self.address}/{self.app} lost ({why}); windows are dropped until it "
            f"is back; reconnecting in {delay:g} s")
        return ClusterUnavailable(f"cluster {self.address}/{self.app} unavailable: {why}")

    def _ready_bridge(self) -> _Bridge:
        """The connected bridge, or ClusterUnavailable while (re)connecting in the background."""
        if self._bridge is None:
            if time.monotonic() < self._retry_at:
                raise ClusterUnavailable(f"cluster {self.address}/{self.app} unavailable; "
                                         "reconnecting")
            try:
                check_reachable(self.address, timeout_s=0.5)
            except S2IError as exc:
                raise self._lost(str(exc)) from None
            self._bridge = _Bridge(self.address, self.app, self.call_timeout_s)
        bridge = self._bridge
        try:
            info = bridge.poll_ready(0)
        except S2IError as exc:
            raise self._lost(str(exc)) from None
        if info is None:
            if time.monotonic() - bridge.started > 120:
                raise self._lost("connecting took over 120 s")
            raise ClusterUnavailable(f"cluster {self.address}/{self.app}: reconnecting")
        if bridge.info is not self.info:
            try:
                check_info(info, self.where)
            except S2IError as exc:
                raise self._lost(str(exc)) from None
            if info["manifest"] != self.manifest:
                raise self._lost("the application now serves a different export; restart "
                                 "this front")
            self.info = info
            self.reconnects += 1
            self._failures = 0
            log(f"cluster {self.address}/{self.app} is back (replica {info.get('replica')}); "
                "streams resume")
        return bridge

    def _call(self, method: str, payload: Any) -> Any:
        bridge = self._ready_bridge()
        self.calls += 1
        kind, value = bridge.call(method, payload, self.call_timeout_s + 15)
        if kind == "ok":
            return value
        if kind == "retried":
            value, why = value
            self.retried_calls += 1
            self._say("retried", f"cluster {self.address}/{self.app}: a replica failed "
                                 f"({why}); the batch was retried once and went through")
            return value
        if kind == "lost":
            raise self._lost(str(value))
        if kind == "dropped":
            try:                   # a head that stopped answering: reconnect, don't wait on
                check_reachable(self.address, timeout_s=1.0)
            except S2IError as exc:
                raise self._lost(str(exc)) from None
            self.dropped_calls += 1
            self._say("dropped", f"cluster {self.address}/{self.app}: a batch was dropped "
                                 f"({value}); the stream goes on")
            raise ClusterUnavailable(f"cluster call dropped: {value}")
        raise S2IError(f"{self.where} rejected the request: {value}")

    def close(self) -> None:
        if self._bridge is not None:
            self._bridge.close()
            self._bridge = None

    def __enter__(self) -> ClusterTranslator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the Translator interface ----------------------------------------------------------

    def translate_batch(self, inputs: np.ndarray, masks: Sequence[np.ndarray], samples: int
                        ) -> tuple[np.ndarray, dict[str, float]]:
        """B windows ``[B,1,128,100]`` and masks ``[B*K, C_i]`` -> images ``[B*K,3,96,96]``
        (window-major), in one call, and its timings: ``cluster`` (the round trip) and the
        replica's ``encoder`` and ``generator`` times of the model run that computed them."""
        start = time.perf_counter()
        request = make_request(inputs, masks, samples)
        rows = request["spectrogram"].shape[0] * int(samples)
        images, remote = check_reply(self._call("translate", request), rows)
        return images, {"cluster": round((time.perf_counter() - start) * 1000, 3),
                        "encoder": remote.get("encoder", 0.0),
                        "generator": remote.get("generator", 0.0)}

    def translate(self, spectrogram: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        return self.translate_batch(spectrogram, masks, 1)[0]

    def translate_window(self, spectrogram: np.ndarray, masks: Sequence[np.ndarray]
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        samples = masks[0].shape[0] if masks and isinstance(masks[0], np.ndarray) else 0
        if samples < 1 or np.shape(spectrogram)[0] != 1:
            raise S2IError("translate_window() takes one window and [K, C_i] masks")
        images = self.translate_batch(spectrogram, masks, samples)[0]
        return images, images.mean(0, keepdims=True), images.std(0, keepdims=True)

    def encode(self, spectrogram: np.ndarray) -> np.ndarray:
        """Embeddings computed remotely (a call of its own: prefer ``translate_batch``)."""
        z = self._call("encode", make_request(spectrogram, [], 1)["spectrogram"])
        if not isinstance(z, np.ndarray) or z.shape != (len(spectrogram), self.embedding_dim):
            raise S2IError(f"{self.where} sent embeddings of the wrong shape")
        return z

    def generate(self, embedding: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
        """Images from embeddings computed remotely (a call of its own)."""
        request = {"embedding": np.ascontiguousarray(embedding, dtype=np.float32),
                   "masks": [np.ascontiguousarray(m, dtype=np.float32) for m in masks]}
        return check_images(self._call("generate", request), len(embedding))


def open_cluster_translator(cluster: str, call_timeout_s: float = 10.0,
                            connect_timeout_s: float = 60.0) -> ClusterTranslator:
    """``--cluster ADDRESS[/APP]`` -> a connected ClusterTranslator (one-line S2IError if the
    cluster or the application cannot be reached)."""
    address, app = parse_cluster(cluster)
    return ClusterTranslator(address, app, call_timeout_s, connect_timeout_s)
