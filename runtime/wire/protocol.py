"""The S2I ZeroMQ wire format, protocol 2 (see docs/PROTOCOL.md): frames on PUB, audio on PUSH.

Image message (PUB/XPUB -> SUB), multipart:
    [topic, header JSON ("kind": "frame"), image_0, ..., image_{K-1}, (uncertainty map)]
Hello message (on PUB after subscriptions arrive, at most one per ``HELLO_INTERVAL_S``):
    [topic, header JSON ("kind": "hello")]
End message (on PUB when a stream finishes):
    [topic, header JSON ("kind": "end")]
Audio message (capture node PUSH -> server PULL), multipart:
    [b"audio", header JSON, raw little-endian samples, interleaved]

Every header carries ``session``, random per server process start: ``seq`` restarts at 0
only with a new session. Headers are strict JSON (no NaN/Infinity): audio is sanitised
(``sanitise_audio``) before anything is computed from it.
"""

from __future__ import annotations

import functools
import json
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from runtime.cli import RateLimitedLog
from runtime.errors import S2IError, first_line
from runtime.resilience import ConnectionWatch
from runtime.wire.images import ImageShapeError, jpeg_bytes, png_bytes, png_image
from runtime.wire.security import SUBSCRIBERS_DOMAIN, ServerSecurity, check_address, warn_if_open

PROTOCOL_VERSION = 2
AUDIO_PROTOCOLS = (1, 2)  # capture nodes of protocol 1 keep working (same audio message)
SESSION_ID = secrets.token_hex(8)   # this server process's session (new every start)
HELLO_INTERVAL_S = 0.25   # at most one hello per this interval, however many subscriptions
END_DELAY_S = 1.0         # an end waits this long for frames of its stream still in the model
DEFAULT_TOPIC = "s2i"
AUDIO_TOPIC = b"audio"
ENCODINGS = ("png", "raw", "jpeg")
# the knob of each compressed encoding: (header field, range, default)
ENCODING_LEVELS: dict[str, tuple[str, int, int, int]] = {
    "png": ("compress_level", 0, 9, 1), "jpeg": ("quality", 1, 95, 85)}
UNCERTAINTY_SCALE = 0.5   # uncertainty pixel u8 -> std = u8 / 255 * 0.5 (images in [0, 1])
SUBSCRIPTION_POLL_S = 0.005   # publish() handles (un)subscriptions at most this often
PUB_SNDHWM = 20           # frames queued per subscriber before PUB drops (never blocks)


def pub_hwm(max_batch: int) -> int:
    """A server's PUB high-water mark: ``PUB_SNDHWM``, and at least two batches' frames. A
    batch's frames are sent back to back; with a mark below the batch, frames past it were
    dropped for EVERY subscriber before ZeroMQ's I/O thread could move them on (issue 21: a
    third of the frames at 1.5x capacity, where batches grow)."""
    return max(PUB_SNDHWM, 2 * int(max_batch))
MAX_IMAGE_BYTES = 64 * 1024 * 1024   # a frame's image (H*W*3) a client decodes at most


# --- audio level and strict JSON -------------------------------------------------------------

def sanitise_audio(audio: np.ndarray) -> np.ndarray:
    """Samples as the model and the level fields see them: NaN -> 0, then clipped to [-1, 1]
    (so +-Inf -> +-1, and 4.0 -> 1.0 like any clipped sample). Returns a float32 copy."""
    audio = np.nan_to_num(np.asarray(audio, np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(audio, -1.0, 1.0, out=audio)


def audio_level(audio: np.ndarray) -> tuple[float, float]:
    """(rms, peak) of the sanitised samples; both in [0, 1], 0 for an empty window."""
    clean = sanitise_audio(audio)
    if clean.size == 0:
        return 0.0, 0.0
    rms, peak = audio_levels(clean.reshape(1, -1))
    return float(rms[0]), float(peak[0])


def audio_levels(clean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rms, peak) of each row of ALREADY SANITISED windows ``[B, n]`` (n >= 1), float64:
    the level fields of a whole batch in one pass each."""
    return _levels(clean, clean.max(axis=-1), clean.min(axis=-1))


def sanitise_rows(audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sanitises float32 windows ``[B, n]`` (n >= 1) IN PLACE as ``sanitise_audio`` does and
    returns their (rms, peak) (``audio_levels``). Rows already finite and within [-1, 1]
    (the usual case) cost the two reductions the peak needs anyway: no copy, no other pass."""
    high, low = audio.max(axis=-1), audio.min(axis=-1)
    if not ((high <= 1.0).all() and (low >= -1.0).all()):    # NaN, +-inf or out of range
        np.nan_to_num(audio, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
        np.clip(audio, -1.0, 1.0, out=audio)
        high, low = audio.max(axis=-1), audio.min(axis=-1)
    return _levels(audio, high, low)


def _levels(clean: np.ndarray, high: np.ndarray, low: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    peak = np.maximum(high, -low).astype(np.float64)
    rows = np.asarray(clean, np.float32)
    # one dot product per row (BLAS, float32: |error| ~1e-7 for samples in [-1, 1]), never
    # above the peak
    energy = np.matmul(rows[:, None, :], rows[:, :, None])[:, 0, 0].astype(np.float64)
    return np.minimum(np.sqrt(energy / rows.shape[-1]), peak), peak


# One encoder for every header (``json.dumps`` with options builds one per call).
_COMPACT_STRICT_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def dumps_header(header: dict[str, Any]) -> bytes:
    """Strict JSON (RFC 8259): a NaN or infinity anywhere is a one-line error, never sent."""
    try:
        return _COMPACT_STRICT_JSON.encode(header).encode()
    except ValueError as exc:
        bad = sorted(k for k, v in header.items() if isinstance(v, float) and not math.isfinite(v))
        raise S2IError(f"S2I {header.get('kind', 'message')} header has a non-finite number "
                       f"in {bad or 'a nested field'}; refusing to send invalid JSON") from exc


def image_shape(manifest: dict[str, Any]) -> list[int] | None:
    """``[H, W, 3]`` of the generator's images from an export manifest (None if not stated)."""
    try:
        shape = manifest["models"]["generator"]["outputs"][0]["shape"]
        channels, height, width = (int(n) for n in shape[-3:])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return [height, width, channels]


# --- images ---------------------------------------------------------------------------------

def images_to_uint8(images: np.ndarray) -> np.ndarray:
    """Generator output ``[K, 3, H, W]`` in [-1, 1] -> ``[K, H, W, 3]`` uint8, C-contiguous
    (a payload is then one plain copy: a transposed view cost a strided copy per frame,
    2x the conversion itself). Channels are interleaved one plane at a time, the fastest
    NumPy way (a whole-array transposed copy of uint8 is 3x slower)."""
    images = np.asarray(images, dtype=np.float32)
    planes = np.round((np.clip(images, -1, 1) + 1) * 127.5).astype(np.uint8)
    out = np.empty((planes.shape[0], *planes.shape[2:], planes.shape[1]), np.uint8)
    for channel in range(planes.shape[1]):
        out[..., channel] = planes[:, channel]
    return out


def uncertainty_map(images: np.ndarray) -> np.ndarray:
    """Per-pixel std across the K samples (RGB mean, images in [0, 1]) as ``[H, W]`` uint8."""
    unit = (np.clip(np.asarray(images, np.float32), -1, 1) + 1) / 2     # [K, 3, H, W]
    std = unit.std(axis=0).mean(axis=0)                                 # [H, W]
    return np.round(np.clip(std / UNCERTAINTY_SCALE, 0, 1) * 255).astype(np.uint8)


def encoding_level_of(encoding: str, level: int | None = None) -> int | None:
    """The PNG compression level (0-9, default 1: fastest that compresses) or JPEG quality
    (1-95, default 85) of ``encoding``, checked; None for ``raw``."""
    if encoding not in ENCODINGS:
        raise S2IError(f"unknown image encoding {encoding!r}; expected one of {ENCODINGS}")
    if encoding not in ENCODING_LEVELS:
        return None
    name, low, high, default = ENCODING_LEVELS[encoding]
    if level is None:
        return default
    if isinstance(level, bool) or not isinstance(level, int) or not low <= level <= high:
        raise S2IError(f"{encoding} {name.replace('_', ' ')} must be an integer in "
                       f"[{low}, {high}], got {level!r}")
    return level


def encode_image(image: np.ndarray, encoding: str, level: int | None = None) -> bytes:
    """One uint8 picture as a payload: ``raw`` bytes, ``png`` (``level`` = compression
    level) or lossy ``jpeg`` (``level`` = quality); see ``encoding_level``."""
    level = encoding_level_of(encoding, level)
    if encoding == "png":
        return png_bytes(image, compress_level=level or 0)
    if encoding == "jpeg":
        return jpeg_bytes(image, quality=level or 1)
    return np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def decode_image(payload: bytes, encoding: str, shape: list[int]) -> np.ndarray:
    if encoding == "raw":
        expected = int(np.prod(shape))
        if len(payload) != expected:
            raise S2IError(f"raw image payload has {len(payload)} bytes, header shape {shape} "
                           f"needs {expected}")
        return np.frombuffer(payload, np.uint8).reshape(shape)
    if encoding in ("png", "jpeg"):
        return png_image(payload, shape, encoding.upper())
    raise S2IError(f"unknown image encoding {encoding!r}; expected one of {ENCODINGS}")


def encode_frame(topic: str, header: dict[str, Any], images_u8: np.ndarray,
                 uncertainty: np.ndarray | None, encoding: str,
                 level: int | None = None) -> list[bytes]:
    """Build the multipart image message.

    Fills kind/protocol/shape/encoding/samples into a copy of ``header`` (and, for png and
    jpeg, ``encoding_level``: the compression level or quality) and adds the time the
    payload encoding took to ``header["timings_ms"]["encoding"]`` and ``publish_time``.
    """
    start = time.perf_counter()
    level = encoding_level_of(encoding, level)
    payloads = [encode_image(img, encoding, level) for img in images_u8]
    if uncertainty is not None:
        payloads.append(encode_image(uncertainty, encoding, level))
    header = dict(header, kind="frame", protocol=PROTOCOL_VERSION, session=SESSION_ID,
                  encoding=encoding, encoding_level=level, samples=int(len(images_u8)),
                  shape=list(images_u8.shape[1:]), uncertainty=uncertainty is not None,
                  uncertainty_shape=None if uncertainty is None else list(uncertainty.shape),
                  uncertainty_scale=None if uncertainty is None else UNCERTAINTY_SCALE)
    header["timings_ms"] = dict(header.get("timings_ms", {}),
                                encoding=round((time.perf_counter() - start) * 1000, 3))
    header["publish_time"] = time.time()
    return [topic.encode(), dumps_header(header)] + payloads


@dataclass
class Frame:
    topic: str
    header: dict[str, Any]
    images: list[np.ndarray]              # K arrays [H, W, 3] uint8
    uncertainty: np.ndarray | None        # [H, W] uint8 or None

    @property
    def seq(self) -> int:
        return int(self.header["seq"])

    @property
    def stream(self) -> str:
        return str(self.header.get("stream"))

    @property
    def session(self) -> str:
        return str(self.header.get("session"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (RFC 8259)")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:20]} is out of the double range")
    return number


def decode_header(parts: list[bytes], versions: tuple[int, ...] = (PROTOCOL_VERSION,),
                  strict: bool = True) -> dict[str, Any]:
    """Part 1 of a message as a JSON object of one of ``versions``; else one ``S2IError``.

    ``strict``: ``NaN``, ``Infinity`` and numbers outside the double range (``1e999``) are
    refused, as RFC 8259 says (a client would re-serve them as invalid JSON); ``decode_audio``
    reads them leniently and then refuses each of its fields by name.
    """
    if len(parts) < 2:
        raise S2IError(f"S2I message needs at least a topic and a header, got {len(parts)} parts")
    hooks: dict[str, Any] = ({"parse_constant": _no_constant, "parse_float": _finite_float}
                             if strict else {})
    try:
        header = json.loads(parts[1], **hooks)
    except (ValueError, RecursionError) as exc:   # bad UTF-8/JSON, an int of 4,300+ digits
        raise S2IError(f"S2I message header is not strict JSON: {first_line(exc)[:120]}") \
            from exc
    if not isinstance(header, dict):
        raise S2IError(f"S2I message header should be a JSON object, got "
                       f"{type(header).__name__}")
    version = header.get("protocol")
    if isinstance(version, bool) or version not in versions:
        raise S2IError(f"S2I message has protocol {str(version)[:20]}; this client reads "
                       f"version {' or '.join(map(str, versions))}")
    return header


def _frame_shape(header: dict[str, Any], key: str, where: str) -> list[int]:
    shape = header.get(key)
    if not isinstance(shape, list) or not shape or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise S2IError(f"{where}: header {key!r} should be a list of positive integers, "
                       f"got {str(shape)[:60]}")
    if math.prod(shape) > MAX_IMAGE_BYTES:
        raise S2IError(f"{where}: header {key!r} {str(shape)[:60]} is over "
                       f"{MAX_IMAGE_BYTES} bytes per image")
    return shape


def _decode_payload(payload: bytes, encoding: Any, shape: list[int], where: str) -> np.ndarray:
    if encoding not in ENCODINGS:
        raise S2IError(f"{where}: unknown image encoding {encoding!r}; expected one of "
                       f"{ENCODINGS}")
    try:
        image = decode_image(payload, encoding, shape)
    except S2IError as exc:
        raise S2IError(f"{where}: {exc}") from exc
    except ImageShapeError as exc:
        raise S2IError(f"{where}: image is {exc.found}, the header says {shape}") from exc
    except Exception as exc:        # PIL raises many kinds on a corrupt PNG
        raise S2IError(f"{where}: {encoding} payload does not decode "
                       f"({type(exc).__name__}: {exc})") from exc
    if list(image.shape) != list(shape) or image.dtype != np.uint8:
        raise S2IError(f"{where}: image is {list(image.shape)} {image.dtype}, the header says "
                       f"{shape} uint8")
    return image


def decode_frame(parts: list[bytes]) -> Frame:
    """Parse an image message; any malformed part raises ``S2IError("S2I frame <seq>: ...")``."""
    header = decode_header(parts)
    where = f"S2I frame {str(header.get('seq', '?'))[:20]}"
    _integer(header, "seq", 0, None, where=f"{where}: header")
    k = _integer(header, "samples", 0, None, where=f"{where}: header")
    expected = 2 + k + (1 if header.get("uncertainty") else 0)
    if len(parts) != expected:
        raise S2IError(f"{where}: has {len(parts)} parts, its header promises {expected}")
    encoding = header.get("encoding")
    shape = _frame_shape(header, "shape", where)
    images = [_decode_payload(p, encoding, shape, f"{where} image {i}")
              for i, p in enumerate(parts[2:2 + k])]
    uncertainty = None
    if header.get("uncertainty"):
        unc_shape = _frame_shape(header, "uncertainty_shape", where)
        uncertainty = _decode_payload(parts[2 + k], encoding, unc_shape, f"{where} uncertainty")
    return Frame(parts[0].decode(errors="replace"), header, images, uncertainty)


def hello_message(topic: str, info: dict[str, Any]) -> list[bytes]:
    """``[topic, hello]``: the server's description (``Pipeline.info()``) plus kind, protocol,
    session, topic and time."""
    uncertainty = bool(info.get("uncertainty"))
    shape = info.get("shape")
    header = dict(info, kind="hello", protocol=PROTOCOL_VERSION, session=SESSION_ID,
                  topic=topic, time=time.time(), uncertainty=uncertainty,
                  uncertainty_shape=list(shape[:2]) if uncertainty and shape else None,
                  uncertainty_scale=UNCERTAINTY_SCALE if uncertainty else None)
    return [topic.encode(), dumps_header(header)]


END_REASONS = ("end-of-file", "end-of-input", "source-stopped", "node-stopped", "node-expired",
               "server-stopped")


def end_message(topic: str, stream: str, reason: str, last_seq: int | None) -> list[bytes]:
    """``[topic, end]``: stream ``stream`` of this session sends no more frames."""
    if reason not in END_REASONS:
        raise S2IError(f"unknown end reason {reason!r}; expected one of {END_REASONS}")
    header = {"kind": "end", "protocol": PROTOCOL_VERSION, "session": SESSION_ID,
              "stream": stream, "reason": reason, "last_seq": last_seq, "time": time.time()}
    return [topic.encode(), dumps_header(header)]


# --- audio between capture node and server --------------------------------------------------
# Everything in an audio header is checked before any of it is used: a hostile message
# (an absurd rate, a huge or inconsistent payload, a strange stream id) costs only itself,
# and nothing downstream (soxr, the rings) ever sees an unchecked value.

AUDIO_DTYPES = {"float32": "<f4", "int16": "<i2"}
AUDIO_ITEMSIZE = {name: np.dtype(code).itemsize for name, code in AUDIO_DTYPES.items()}
MIN_AUDIO_RATE, MAX_AUDIO_RATE = 8000, 192000
MAX_AUDIO_CHANNELS = 32
MAX_AUDIO_SECONDS = 2.0          # one message carries at most this much audio
MAX_AUDIO_HEADER_BYTES = 2048
# One message part is at most 1 MiB (2 s of stereo float32 at 48 kHz is 750 KiB): the server
# queues at most PULL_RCVHWM of them per connection, so the worst case is bounded in bytes.
MAX_AUDIO_PAYLOAD_BYTES = 1024 * 1024
MAX_AUDIO_SEQ = 2**53            # seq is an integer a double holds exactly (JavaScript nodes)
STREAM_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
NODE_ID = secrets.token_hex(8)   # this process's capture-node instance id (new every start)


def encode_audio(stream_id: str, seq: int, samples: np.ndarray, sample_rate: int,
                 capture_time: float, channels: int = 1, node: str = NODE_ID,
                 end: bool = False) -> list[bytes]:
    """``[b"audio", header, float32 samples]``; ``node`` tells the server which capture
    process sends (two nodes claiming one stream id are told apart by it)."""
    header = {"kind": "audio", "protocol": PROTOCOL_VERSION, "stream": stream_id, "seq": seq,
              "sample_rate": int(sample_rate), "channels": int(channels), "dtype": "float32",
              "capture_time": float(capture_time), "node": node}
    if end:     # the node's last message (no samples): the server ends the stream now
        header["end"] = True
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    return [AUDIO_TOPIC, dumps_header(header), data]


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


# One decoder for every audio header (``json.loads`` with an option builds one per call).
_STRICT_JSON = json.JSONDecoder(parse_constant=_refuse_constant)


def _loads_audio_header(data: bytes) -> dict[str, Any]:
    """The audio header as strict JSON in UTF-8 (no NaN/Infinity, no absurd numbers): a dict,
    or one ``S2IError`` line."""
    try:
        header = _STRICT_JSON.decode(bytes(data).decode("utf-8"))
    except (ValueError, RecursionError) as exc:   # JSONDecodeError, UTF-8, 4,300+ digits
        raise S2IError(f"audio message header is not strict JSON: "
                       f"{str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"
                       ) from exc
    if not isinstance(header, dict):
        raise S2IError(f"audio message header should be a JSON object, got "
                       f"{type(header).__name__}")
    return header


def _is_int(value: Any) -> bool:
    return type(value) is int       # what JSON gives for 5 (never 5.0, never true)


def _finite_number(header: dict[str, Any], key: str) -> float:
    value = header.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(float(value)):
        raise S2IError(f"audio message header {key!r} should be a finite number, got "
                       f"{str(value)[:40]}")
    return float(value)


def _integer(header: dict[str, Any], key: str, low: int, high: int | None,
             default: Any = None, where: str = "audio message header") -> int:
    """A JSON integer (``5``, never ``5.0`` or ``true``) in ``[low, high]`` (``high`` None: no
    upper bound); ``where`` starts the error line."""
    value = header.get(key, default)
    if not _is_int(value) or value < low or (high is not None and value > high):
        span = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise S2IError(f"{where} {key!r} should be an integer {span}, got {str(value)[:40]}")
    return int(value)


def _name(header: dict[str, Any], key: str, pattern: re.Pattern[str], default: str) -> str:
    value = header.get(key, default)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise S2IError(f"audio message header {key!r} should be 1-64 characters of "
                       f"[A-Za-z0-9._-], got {str(value)[:70]!r}")
    return value


@functools.lru_cache(maxsize=256)
def audio_payload_cap(sample_rate: int, channels: int, dtype: str) -> int:
    """Most payload bytes one audio message may carry: ``MAX_AUDIO_SECONDS`` of audio, and
    never more than ``MAX_AUDIO_PAYLOAD_BYTES`` (a whole number of frames)."""
    frame_bytes = AUDIO_ITEMSIZE[dtype] * channels
    frames = min(int(MAX_AUDIO_SECONDS * sample_rate), MAX_AUDIO_PAYLOAD_BYTES // frame_bytes)
    return frames * frame_bytes


def audio_header(parts: list[bytes]) -> dict[str, Any]:
    """An audio message's header, unchecked beyond its form: ``[b'audio', header, samples]``,
    a header of at most ``MAX_AUDIO_HEADER_BYTES`` of strict JSON that is an object; else one
    ``S2IError`` line. ``decode_audio`` checks its fields; ``s2i-serve --workers`` routes by
    its ``stream``."""
    if not isinstance(parts, list) or len(parts) != 3 or parts[0] != AUDIO_TOPIC:
        raise S2IError("not an S2I audio message ([b'audio', header, samples])")
    if len(parts[1]) > MAX_AUDIO_HEADER_BYTES:
        raise S2IError(f"audio message header of {len(parts[1])} bytes is over "
                       f"{MAX_AUDIO_HEADER_BYTES}")
    return _loads_audio_header(parts[1])


def decode_audio(parts: list[bytes]) -> tuple[dict[str, Any], np.ndarray]:
    """A checked audio message -> (normalised header, float32 samples ``[n, channels]``).

    The header comes back with ``stream``, ``node`` (str), ``seq``, ``sample_rate``,
    ``channels`` (int), ``capture_time`` (float) and ``end`` (bool), each validated with
    the types of docs/PROTOCOL.md; anything wrong raises one ``S2IError`` line naming the
    field and what was expected. An end message (``"end": true``) needs only ``kind``,
    ``protocol``, ``stream`` and ``node`` and an empty payload; it returns no samples.
    """
    header = audio_header(parts)
    if header.get("kind") != "audio":
        raise S2IError(f"audio message header 'kind' should be \"audio\", got "
                       f"{str(header.get('kind'))[:20]!r}")
    version = header.get("protocol")
    if not _is_int(version) or version not in AUDIO_PROTOCOLS:
        raise S2IError(f"audio message has protocol {str(version)[:20]}; this server reads "
                       f"{' or '.join(map(str, AUDIO_PROTOCOLS))}")
    end = header.get("end", False)
    if not isinstance(end, bool):
        raise S2IError(f"audio message header 'end' should be true or false, got "
                       f"{str(end)[:20]}")
    checked: dict[str, Any] = {
        "stream": _name(header, "stream", STREAM_ID_PATTERN, "capture"),
        "node": _name(header, "node", NODE_ID_PATTERN, "unnamed"),
        "end": end,
    }
    payload = parts[2]
    if end:
        if len(payload):
            raise S2IError(f"audio end message should have an empty payload, got "
                           f"{len(payload)} bytes")
        return dict(header, **checked), np.zeros((0, 1), np.float32)
    dtype = header.get("dtype")
    if not isinstance(dtype, str) or dtype not in AUDIO_DTYPES:
        raise S2IError(f"audio message dtype should be one of {sorted(AUDIO_DTYPES)}, got "
                       f"{str(dtype)[:20]!r}")
    checked.update(
        seq=_integer(header, "seq", 0, MAX_AUDIO_SEQ),
        sample_rate=_integer(header, "sample_rate", MIN_AUDIO_RATE, MAX_AUDIO_RATE),
        channels=_integer(header, "channels", 1, MAX_AUDIO_CHANNELS, 1),
        capture_time=_finite_number(header, "capture_time"),
        dtype=dtype)
    cap = audio_payload_cap(checked["sample_rate"], checked["channels"], dtype)
    if len(payload) > cap:
        raise S2IError(f"audio message payload of {len(payload)} bytes is over the cap of "
                       f"{cap} (at most {MAX_AUDIO_SECONDS:g} s and "
                       f"{MAX_AUDIO_PAYLOAD_BYTES} bytes)")
    frame_bytes = AUDIO_ITEMSIZE[dtype] * checked["channels"]
    if len(payload) % frame_bytes:
        raise S2IError(f"audio message payload of {len(payload)} bytes does not split into "
                       f"{checked['channels']}-channel {dtype} frames")
    samples = np.frombuffer(payload, AUDIO_DTYPES[dtype]).reshape(-1, checked["channels"])
    if dtype == "int16":
        samples = samples.astype(np.float32) / 32768.0
    return dict(header, **checked), samples


def check_audio_values(stream: str, sample_rate: int, options: str = "") -> None:
    """What a capture node is about to send, checked with the server's own rules
    (``decode_audio`` of an empty message): a value the server would refuse is a one-line
    ``S2IError`` (``options`` names where the values came from, e.g. the CLI flags)."""
    try:
        decode_audio(encode_audio(stream, 0, np.zeros(0, np.float32), sample_rate, time.time()))
    except S2IError as exc:
        where = f" (check {options})" if options else ""
        raise S2IError(f"the server would refuse this audio: {exc}{where}") from None


# --- sockets --------------------------------------------------------------------------------

def bind(socket: zmq.Socket, address: str, what: str) -> None:
    """Bind, or close the socket and raise a one-line error (a context can then terminate)."""
    _attach(socket.bind, socket, address, what, "bind", "")


def connect(socket: zmq.Socket, address: str, what: str) -> None:
    """Connect, or close the socket and raise a one-line error."""
    _attach(socket.connect, socket, address, what, "connect",
            " (expected e.g. tcp://127.0.0.1:5556)")


def _attach(attach: Callable[[str], Any], socket: zmq.Socket, address: str, what: str,
            verb: str, hint: str) -> None:
    try:
        check_address(address, what)
        attach(address)
    except S2IError:
        socket.close(linger=0)
        raise
    except zmq.ZMQError as exc:
        socket.close(linger=0)
        raise S2IError(f"cannot {verb} the {what} socket to {address}: {exc}{hint}") from exc


def _report_all_subscriptions(socket: zmq.Socket) -> None:
    """XPUB_VERBOSER (libzmq >= 4.2.5): every subscription and every unsubscription, also
    duplicates and those of a SUB that went away; else XPUB_VERBOSE (subscriptions only)."""
    option = getattr(zmq, "XPUB_VERBOSER", None)
    if option is not None:
        try:
            socket.setsockopt(option, 1)
            return
        except zmq.ZMQError:
            pass
    socket.setsockopt(zmq.XPUB_VERBOSE, 1)


class Publisher:
    """An XPUB socket: SUB clients see a plain PUB; the server also sees their subscriptions.

    ``SNDHWM`` bounds what is queued for a slow subscriber: past it PUB drops frames for that
    subscriber, never blocking the loop. New subscriptions are answered with a ``hello`` on
    the publisher's topic, which tells a client that its subscription is live (the
    slow-joiner handshake; nobody sleeps). Hellos are rate-limited: subscriptions arriving
    within ``HELLO_INTERVAL_S`` share one hello, so a peer that subscribes and unsubscribes
    in a loop cannot crowd frames out of other subscribers' queues.

    One thread owns the socket (``publish``, ``poll_subscriptions``, ``flush_ends``);
    ``end`` may be called from any thread: the owner sends it with its next poll, after
    ``END_DELAY_S`` (so frames of that stream still in the model go out first).
    """

    def __init__(self, ctx: zmq.Context, address: str, topic: str, info: dict[str, Any],
                 sndhwm: int = PUB_SNDHWM, security: ServerSecurity | None = None,
                 connect_to: bool = False) -> None:
        """``connect_to``: connect to ``address`` (an ``s2i-serve --workers`` worker's frames
        go to its parent's XSUB) instead of binding it."""
        self.topic, self.info = topic, info
        self.socket = ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        _report_all_subscriptions(self.socket)
        if security is not None:
            security.secure(self.socket, SUBSCRIBERS_DOMAIN)
        if connect_to:
            connect(self.socket, address, "publisher")
        else:
            bind(self.socket, address, "publisher")
            warn_if_open(address, "publisher (PUB)", curve=security is not None)
        self.address = self.socket.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.subscribers = 0
        self.sent = 0
        self.hellos = 0
        self._hello_due = False
        self._next_hello = 0.0
        self._next_poll = 0.0
        self.last_seq: dict[str, int] = {}        # stream -> last seq published (live streams)
        self._ends: list[tuple[float, str, str]] = []   # (due monotonic time, stream, reason)
        self._ends_lock = threading.Lock()
        self._watch: ConnectionWatch | None = None   # made by the owning thread

    def _ours(self, prefix: bytes) -> bool:
        """Whether a subscription to ``prefix`` receives our topic (SUB matches prefixes)."""
        return self.topic.encode().startswith(prefix)

    def poll_subscriptions(self, timeout_ms: int = 0) -> int:
        """Handle pending (un)subscriptions, send a due hello and due end messages.

        Returns the live subscriptions that receive our topic; others are ignored.
        """
        if self._watch is None:     # failed accepts (no file descriptor left), handshakes
            try:
                self._watch = ConnectionWatch(self.socket, "publisher (PUB)", RateLimitedLog(),
                                              disconnects=False)
            except zmq.ZMQError:    # no file descriptor left for the monitor: next time
                pass
        if self._watch is not None:
            self._watch.poll()
        while self.socket.poll(timeout_ms, zmq.POLLIN):
            timeout_ms = 0
            event = self.socket.recv()
            if not event or not self._ours(event[1:]):
                continue
            if event[:1] == b"\x01":
                self.subscribers += 1
                self._hello_due = True
            elif event[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)
        self._send_due_hello()
        if self._ends:
            self.flush_ends()
        return self.subscribers

    def _send_due_hello(self, force: bool = False) -> None:
        """The hello owed to new subscriptions, at most one per ``HELLO_INTERVAL_S``
        (``force``: now, before the last messages of a run, so that none is owed at exit)."""
        now = time.monotonic()
        if self._hello_due and (force or now >= self._next_hello):
            self._hello_due = False
            self._next_hello = now + HELLO_INTERVAL_S
            self.hellos += 1
            self._send(hello_message(self.topic, self.info))

    def _send(self, parts: list[bytes]) -> None:
        try:
            self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            pass    # XPUB drops past the HWM anyway; never block the loop

    def publish(self, parts: list[bytes], stream: str | None = None,
                seq: int | None = None) -> None:
        """Send one frame message; ``stream`` and ``seq`` (its header's, for the stream's end
        message) spare re-reading the header. Subscriptions are handled at most every
        ``SUBSCRIPTION_POLL_S`` here (a batch's frames go out back to back)."""
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + SUBSCRIPTION_POLL_S
            self.poll_subscriptions()
        self._send(parts)
        self.sent += 1
        if stream is None or seq is None:
            try:
                header = json.loads(parts[1])
                stream, seq = str(header["stream"]), int(header["seq"])
            except (ValueError, KeyError, TypeError, IndexError):
                return
        self.last_seq[stream] = seq

    def end(self, stream: str, reason: str, delay_s: float = END_DELAY_S) -> None:
        """Announce that ``stream`` finished (thread-safe; sent after ``delay_s``)."""
        with self._ends_lock:
            self._ends.append((time.monotonic() + delay_s, stream, reason))

    def flush_ends(self, force: bool = False) -> int:
        """Send the end messages that are due (all of them with ``force``, after a hello still
        owed to a subscriber); returns how many."""
        if force:
            self._send_due_hello(force=True)
        now = time.monotonic()
        with self._ends_lock:
            due = [e for e in self._ends if force or e[0] <= now]
            self._ends = [e for e in self._ends if not (force or e[0] <= now)]
        for _, stream, reason in due:
            self._send(end_message(self.topic, stream, reason, self.last_seq.pop(stream, None)))
        return len(due)

    def close(self, linger_ms: int = 0) -> None:
        """Close; ``linger_ms`` > 0 lets frames already queued go out (end of a file)."""
        if self._watch is not None:
            self._watch.close()
        self.socket.close(linger=linger_ms)
