"""The process that holds the Ray connection for one front (``ClusterTranslator``).

Ray ends a driver process when it loses its cluster (the raylet or GCS goes away), so the
front never calls ``ray.init`` itself: this child does, answers over a pipe, and is the only
thing that dies with the cluster. Messages on the pipe (a local socket pair between a parent
and the child it spawned)::

    child -> parent  ("ready", info) | ("fatal", line)        once, after connecting
    parent -> child  (method, payload) | None (quit)
    child -> parent  ("ok", value) | ("retried", (value, line)) | ("error", line)
                     | ("dropped", line)

A call whose replica dies is retried once (Serve routes it to a live replica); a second
failure is reported as ``dropped``. A call the replica rejects (``S2IError``) is an ``error``.
"""

from __future__ import annotations

import logging
import os
import sys
from multiprocessing.connection import Connection
from typing import Any

from runtime.errors import S2IError, first_line


def _quiet() -> None:
    for name in ("ray", "ray.serve", "ray.data", "ray.tune"):
        logging.getLogger(name).setLevel(logging.ERROR)


def bridge_main(conn: Connection, address: str, app: str, call_timeout_s: float) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    _quiet()
    try:
        import ray
        from ray import serve
    except ImportError:
        conn.send(("fatal", "ray[serve] is not installed here (pip install 's2i[cluster]')"))
        return
    try:
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:  # ConnectionError, RuntimeError...: one line to the parent
        conn.send(("fatal", f"cannot connect to the Ray cluster at {address}: "
                            f"{first_line(exc)}"))
        return
    _quiet()
    try:
        handle = serve.get_app_handle(app)
        info = handle.info.remote().result(timeout_s=call_timeout_s)
    except Exception as exc:
        conn.send(("fatal", f"the Ray cluster at {address} serves no S2I application "
                            f"'{app}' ({first_line(exc, with_type=True)}); deploy it with "
                            "`serve deploy deploy/serve.yaml`"))
        ray.shutdown()
        return
    conn.send(("ready", info))
    try:
        while True:
            message = conn.recv()
            if message is None:
                break
            method, payload = message
            conn.send(_call(handle, method, payload, call_timeout_s))
    except (EOFError, OSError, KeyboardInterrupt):
        pass                      # the front went away or is stopping
    finally:
        ray.shutdown()


def _call(handle: Any, method: str, payload: Any, timeout_s: float) -> tuple[str, Any]:
    from ray.exceptions import GetTimeoutError, RayTaskError

    target = handle if method == "translate" else getattr(handle, method)
    failure = ""
    for attempt in range(2):
        try:
            value = target.remote(payload).result(timeout_s=timeout_s)
            return ("retried", (value, failure)) if attempt else ("ok", value)
        except S2IError as exc:     # the replica rejected the request: not worth a retry
            cause = getattr(exc, "cause", None)     # Ray wraps it in a RayTaskError subclass
            return "error", first_line(cause if isinstance(cause, BaseException) else exc)
        except (GetTimeoutError, TimeoutError):     # not retried: that would double the wait
            return "dropped", f"no reply within {timeout_s:g} s"
        except RayTaskError as exc:  # the replica's code failed on this batch
            cause = getattr(exc, "cause", None)
            failure = first_line(cause if isinstance(cause, BaseException) else exc,
                                 with_type=True)
        except Exception as exc:     # replica died/unavailable, node lost...: retry once
            failure = first_line(exc, with_type=True)
    return "dropped", f"failed twice ({failure})"


def main(argv: list[str]) -> int:
    fd, address, app, timeout = argv
    conn = Connection(int(fd))
    try:
        bridge_main(conn, address, app, float(timeout))
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
