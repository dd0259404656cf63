"""What crosses between a front and the S2I Serve deployment, checked where it arrives.

A front sends, per batch of B windows with K MC-dropout samples each, ONE request::

    {"wire": 2, "spectrogram": float32 [B, 1, 128, 100],
     "masks": [float32 [B*K, C_i] per dropout layer], "samples": K}

and gets back ``{"images": float32 [B*K, 3, 96, 96], "timings_ms": {"encoder": ms,
"generator": ms}}`` (rows window-major: window 0's K samples first; the times are the
replica's model run, which may have merged other fronts' calls). Spectrograms and explicit
masks cross the wire, not mask seeds: the masks are one value per channel per sample (a few
KB against the 51 KB spectrogram), and a replica then computes
exactly what the local backend computes for the same masks, whichever replica runs the batch
and whatever other fronts' windows share its model run. Seeds would tie the result to the
replica's numpy version and to the order of draws.

Ray moves these objects with its own serialization inside the cluster (a cluster is one trust
domain: bind Ray to a private network, docs/SCALING.md); these checks are about form, so a
malformed request costs only the call that sent it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from runtime.errors import S2IError

WIRE_VERSION = 2         # 2: replies carry the replica's timings_ms
DEFAULT_APP = "s2i"
SPECTROGRAM_TAIL = (1, 128, 100)
IMAGE_TAIL = (3, 96, 96)
MAX_ROWS = 4096          # images per call: far above any batch a front sends
_APP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_cluster(value: str) -> tuple[str, str]:
    """``ADDRESS[/APP]`` -> (Ray address, Serve application name). ADDRESS is ``auto``,
    ``HOST:PORT`` (the head's GCS port, 6379 by default) or ``ray://HOST:PORT``."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    address, _, app = rest.partition("/")
    app = app or DEFAULT_APP
    if not address:
        raise S2IError(f"--cluster {value!r}: expected ADDRESS[/APP], e.g. 10.0.0.5:6379/s2i "
                       "or auto/s2i")
    if not _APP_NAME.match(app):
        raise S2IError(f"--cluster {value!r}: application name {app!r} should be letters, "
                       "digits, '_', '-' or '.'")
    return (f"{scheme}://{address}" if scheme else address), app


def _float32(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
        raise S2IError(f"{what} should be a float numpy array, got "
                       f"{getattr(value, 'dtype', type(value).__name__)}")
    return np.ascontiguousarray(value, dtype=np.float32)


def make_request(spectrogram: np.ndarray, masks: Sequence[np.ndarray], samples: int
                 ) -> dict[str, Any]:
    return {"wire": WIRE_VERSION, "spectrogram": _float32(spectrogram, "spectrogram"),
            "masks": [_float32(m, "mask") for m in masks], "samples": int(samples)}


def check_request(request: Any, dropout: Sequence[dict[str, Any]]
                  ) -> tuple[np.ndarray, list[np.ndarray], int]:
    """A translate request -> (spectrogram [B,1,128,100], masks [B*K, C_i], K), or an
    S2IError naming what is wrong."""
    if not isinstance(request, dict):
        raise S2IError(f"cluster request should be a dict, got {type(request).__name__}")
    if request.get("wire") != WIRE_VERSION:
        raise S2IError(f"cluster request has wire version {request.get('wire')!r}, this "
                       f"replica speaks {WIRE_VERSION}; run the same S2I version everywhere")
    samples = request.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise S2IError(f"cluster request: samples should be a positive integer, got {samples!r}")
    spectrogram = _float32(request.get("spectrogram"), "cluster request spectrogram")
    batch = spectrogram.shape[0] if spectrogram.ndim == 4 else 0
    if spectrogram.shape[1:] != SPECTROGRAM_TAIL or batch < 1 or batch * samples > MAX_ROWS:
        raise S2IError(f"cluster request spectrogram has shape {list(spectrogram.shape)}, "
                       f"expected [B, 1, 128, 100] with 1 <= B*samples <= {MAX_ROWS}")
    if not np.isfinite(spectrogram).all():
        raise S2IError("cluster request spectrogram holds NaN or infinity")
    masks = request.get("masks")
    if not isinstance(masks, list) or len(masks) != len(dropout):
        raise S2IError(f"cluster request should carry {len(dropout)} masks (one per dropout "
                       f"layer), got {len(masks) if isinstance(masks, list) else masks!r}")
    checked = []
    for spec, mask in zip(dropout, masks, strict=True):
        mask = _float32(mask, f"cluster request mask {spec['input']}")
        want = (batch * samples, int(spec["channels"]))
        if mask.shape != want:
            raise S2IError(f"cluster request mask {spec['input']} has shape {list(mask.shape)}, "
                           f"expected {list(want)}")
        if not np.isfinite(mask).all():
            raise S2IError(f"cluster request mask {spec['input']} holds NaN or infinity")
        checked.append(mask)
    return spectrogram, checked, samples


def check_reply(reply: Any, rows: int) -> tuple[np.ndarray, dict[str, float]]:
    """A translate reply -> (images ``[rows, 3, 96, 96]`` float32, the replica's timings)."""
    if not isinstance(reply, dict):
        raise S2IError(f"cluster reply should be a dict, got {type(reply).__name__}")
    timings = reply.get("timings_ms")
    if not isinstance(timings, dict) or not all(
            isinstance(timings.get(key), float) and 0 <= timings[key] < 1e9
            for key in ("encoder", "generator")):
        raise S2IError("cluster reply's timings_ms should hold encoder and generator ms")
    return check_images(reply.get("images"), rows), \
        {key: timings[key] for key in ("encoder", "generator")}


def check_images(reply: Any, rows: int) -> np.ndarray:
    """A translate reply -> images ``[rows, 3, 96, 96]`` float32."""
    if not isinstance(reply, np.ndarray) or reply.dtype != np.float32 \
            or reply.shape != (rows, *IMAGE_TAIL):
        shape = list(reply.shape) if isinstance(reply, np.ndarray) else type(reply).__name__
        raise S2IError(f"cluster reply has {shape}, expected float32 [{rows}, 3, 96, 96]")
    return reply


def check_info(info: Any, where: str) -> dict[str, Any]:
    """The deployment's ``info()``: wire version, the export's manifest, backend, precision."""
    if not isinstance(info, dict) or info.get("wire") != WIRE_VERSION:
        version = info.get("wire") if isinstance(info, dict) else info
        raise S2IError(f"{where} speaks cluster wire version {version!r}, this front speaks "
                       f"{WIRE_VERSION}; run the same S2I version everywhere")
    manifest = info.get("manifest")
    if not isinstance(manifest, dict):
        raise S2IError(f"{where} sent no export manifest")
    for key in ("front_end", "embedding_dim", "dropout"):
        if key not in manifest:
            raise S2IError(f"{where}: its export manifest lacks '{key}'")
    dropout = manifest["dropout"]
    if not isinstance(dropout, list) or not all(
            isinstance(s, dict) and isinstance(s.get("input"), str)
            and isinstance(s.get("channels"), int) and isinstance(s.get("p"), (int, float))
            for s in dropout):
        raise S2IError(f"{where}: its manifest's dropout should be a list of "
                       "{input, channels, p}")
    return info
