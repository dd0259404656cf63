"""The batched model step: windows from any streams -> features -> encoder -> K images each.

``Pipeline.process_batch(windows)`` runs B windows (of one or many streams) through ONE
encoder call on ``[B, 1, 128, 100]`` (or, where the translator computes the log-mel inside
its graph, ``features == "graph"``, on the audio ``[B, n_samples]`` itself: the features
stage then only stacks and sanitises the windows) and ONE generator call on ``[B*K, D]``
with fresh masks per sample, and splits the results back into one ``Result`` per window
(its own stream id, seq and position). The translator is used only through the
``runtime.model.translator.Translator`` Protocol (``manifest``, ``dropout``, ``backend``,
``features`` and the one batched call ``translate_batch``), so the local backends, the cluster
client and the benchmarks' models all drop in.
``process_window`` and ``message`` are the one-window library form (a batch of one).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.errors import S2IError
from runtime.frontend import (
    FrontEndConfig,
    RunningLevel,
    log_mel_batch,
    log_mel_db,
    scale_relative,
)
from runtime.model.masks import draw_masks
from runtime.model.translator import Translator
from runtime.wire.protocol import (
    DEFAULT_TOPIC,
    ENCODINGS,
    PROTOCOL_VERSION,
    audio_level,
    encode_frame,
    encoding_level_of,
    image_shape,
    images_to_uint8,
    sanitise_rows,
    uncertainty_map,
)

MIN_HOP_SECONDS = 0.05
MAX_LEVEL_STREAMS = 4096   # clip-level front ends: running references kept (oldest dropped)


@dataclass
class Window:
    """One due 1-s window of one stream."""

    stream: str
    audio: np.ndarray                 # [n_samples] float32 mono at the model rate
    capture_time: float               # unix time of its last sample
    position_s: float | None = None   # where it ends in its stream
    seq: int | None = None            # the stream's frame number (None: the pipeline counts)
    due_time: float = field(default_factory=time.monotonic)   # when it became due


@dataclass
class Result:
    """The model's output for one window, ready to encode and publish."""

    header: dict[str, Any]
    images: np.ndarray                # [K, H, W, 3] uint8
    uncertainty: np.ndarray | None    # [H, W] uint8


@dataclass
class Batch:
    """Windows travelling through the stages together, with the model's input once computed:
    ``[B,1,128,100]`` log-mel features (host front end) or ``[B, n_samples]`` sanitised audio
    (front end in the graph)."""

    windows: list[Window]
    features: np.ndarray | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    levels: tuple[np.ndarray, np.ndarray] | None = None   # (rms [B], peak [B]) of the audio


class Pipeline:
    """One translator plus the per-window work: features, encoder, K generator samples."""

    def __init__(self, translator: Translator, samples: int = 1, hop_seconds: float = 1.0,
                 uncertainty: bool = False, encoding: str = "png", seed: int | None = None,
                 topic: str = DEFAULT_TOPIC, encoding_level: int | None = None) -> None:
        manifest = translator.manifest
        self.translator = translator
        self.front_end = FrontEndConfig.from_dict(manifest["front_end"])
        self.dropout = translator.dropout
        # the translator runs the log-mel in its graph (runtime.model.backends, features="graph")
        self.in_graph = translator.features == "graph"
        self.samples, self.uncertainty, self.encoding = int(samples), uncertainty, encoding
        self.topic = topic
        if self.samples < 1:
            raise S2IError(f"--samples must be at least 1, got {samples}")
        if encoding not in ENCODINGS:
            raise S2IError(f"--encoding must be one of {ENCODINGS}, got {encoding!r}")
        # PNG compression level or JPEG quality (None: the encoding's default)
        self.encoding_level = encoding_level_of(encoding, encoding_level)
        if uncertainty and self.samples < 2:
            raise S2IError("--uncertainty needs --samples 2 or more (std across samples)")
        window = self.front_end.window_seconds
        if not MIN_HOP_SECONDS <= hop_seconds <= window:
            raise S2IError(f"--hop must be between {MIN_HOP_SECONDS} and the window "
                           f"({window:g} s), got {hop_seconds}")
        self.hop_seconds = float(hop_seconds)
        self.window = self.front_end.n_samples
        self.hop = int(round(hop_seconds * self.front_end.sample_rate))
        self._check_encoder_input(manifest)
        self.rng = np.random.default_rng(seed)
        self._seq: dict[str, int] = {}     # library use only; servers number their streams
        # level "clip" front ends: each stream's running reference and where its last window
        # ended (runtime.frontend.RunningLevel)
        self._levels: OrderedDict[str, tuple[RunningLevel, float | None]] = OrderedDict()
        self.frames = 0

    def _check_encoder_input(self, manifest: dict[str, Any]) -> None:
        inputs = manifest.get("models", {}).get("encoder", {}).get("inputs") or []
        if inputs:
            shape = list(inputs[0].get("shape", []))[1:]
            want = [1, self.front_end.n_mels, self.front_end.n_frames]
            if shape and shape != want:
                raise S2IError(f"export's encoder expects input {shape} but its front end "
                               f"gives {want}; the manifest does not match the model")

    @property
    def sample_rate(self) -> int:
        return self.front_end.sample_rate

    @property
    def backend(self) -> str:
        return str(self.translator.backend)

    def info(self) -> dict[str, Any]:
        """What the hello message tells subscribers about this stream."""
        manifest = self.translator.manifest
        return {"backend": self.backend,
                "classes": manifest.get("classes", []), "samples": self.samples,
                "window_s": self.front_end.window_seconds, "hop_s": self.hop_seconds,
                "sample_rate": self.sample_rate, "encoding": self.encoding,
                "encoding_level": self.encoding_level,
                "features": "graph" if self.in_graph else "host",
                "uncertainty": self.uncertainty, "shape": image_shape(manifest)}

    # --- the stages' work -------------------------------------------------------------------

    def features(self, batch: Batch) -> Batch:
        """Log-mel of every window at once (vectorised over the batch) -> ``[B,1,128,100]``;
        with the front end in the graph, just the sanitised windows ``[B, n_samples]``."""
        start = time.perf_counter()
        # Silence and clipping are valid input; a broken source's NaN/inf must not stop us:
        # NaN -> 0, clipped to [-1, 1], as the level fields (protocol.audio_level) see it.
        audio = np.stack([w.audio for w in batch.windows]).astype(np.float32, copy=False)
        batch.levels = sanitise_rows(audio)    # in place; the headers' rms/peak for all
        if self.in_graph:                      # the model computes the log-mel itself
            batch.features = audio
        elif self.front_end.level == "fixed":
            batch.features = log_mel_batch(audio, self.front_end)[:, None]
        else:
            batch.features = self._running_level_features(audio, batch.windows)[:, None]
        batch.timings_ms["features"] = _ms(start)
        return batch

    def _running_level_features(self, audio: np.ndarray, windows: list[Window]) -> np.ndarray:
        """A clip-level front end on live windows: each stream's level is relative to its
        own running reference, which falls with the stream time between its windows (the
        hop when a window carries no position)."""
        db = log_mel_db(audio, self.front_end)
        references = []
        for window, window_db in zip(windows, db, strict=True):
            level, last = self._levels.pop(window.stream, (None, None))
            level = level or RunningLevel(self.front_end)
            gap = self.hop_seconds if window.position_s is None or last is None \
                else window.position_s - last
            references.append(level.update(float(window_db.max()), gap))
            self._levels[window.stream] = (level, window.position_s)
            if len(self._levels) > MAX_LEVEL_STREAMS:
                self._levels.popitem(last=False)
        return scale_relative(db, self.front_end, np.array(references))

    def draw_masks(self, rows: int) -> list[np.ndarray]:
        """Fresh MC-dropout masks for ``rows`` generator rows (one draw per layer)."""
        return draw_masks(self.dropout, rows, self.rng)

    def infer(self, batch: Batch, masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
        """The translator's one batched call on ``[B,1,128,100]`` (or ``[B, n_samples]`` audio
        with the front end in the graph) and ``[B*K, C_i]`` masks (a local translator: one
        encoder call, one generator call on ``[B*K, D]``); returns ``[B*K, 3, H, W]`` in
        [-1, 1] (window-major: rows b*K .. b*K+K-1)."""
        if batch.features is None:
            self.features(batch)
        if masks is None:
            masks = self.draw_masks(len(batch.windows) * self.samples)
        # ONE call for the batch; a remote translator (runtime.cluster) adds its round trip as
        # ``cluster``, its ``encoder`` / ``generator`` being the replica's own model run
        out, timings = self.translator.translate_batch(batch.features, masks, self.samples)
        batch.timings_ms.update(timings)
        return out

    def split(self, batch: Batch, out: np.ndarray) -> list[Result]:
        """The batch's output back into one ``Result`` per window, each with its own stream,
        seq and position (images to uint8 in one vectorised step)."""
        k = self.samples
        images = images_to_uint8(out)                                  # [B*K, H, W, 3]
        results = []
        for i, window in enumerate(batch.windows):
            rows = out[i * k:(i + 1) * k]
            unc = uncertainty_map(rows) if self.uncertainty else None
            results.append(Result(self._header(window, batch, i), images[i * k:(i + 1) * k],
                                  unc))
        return results

    def process_batch(self, windows: Sequence[Window],
                      masks: Sequence[np.ndarray] | None = None) -> list[Result]:
        """Features, encoder and generator of B windows in one call each; one Result per
        window. ``masks`` (one ``[B*K, C_i]`` array per dropout layer) replaces the fresh
        draw (tests compare a mixed batch with single windows under the same masks)."""
        if not windows:
            return []
        batch = self.features(Batch(list(windows)))
        return self.split(batch, self.infer(batch, masks))

    def _header(self, window: Window, batch: Batch, row: int) -> dict[str, Any]:
        seq = window.seq
        if seq is None:
            seq = self._seq.get(window.stream, 0)
            self._seq[window.stream] = seq + 1
        if batch.levels is not None:
            rms, peak = float(batch.levels[0][row]), float(batch.levels[1][row])
        else:
            rms, peak = audio_level(window.audio)
        return {
            "protocol": PROTOCOL_VERSION, "stream": window.stream, "seq": int(seq),
            "capture_time": float(window.capture_time), "position_s": window.position_s,
            "window_s": self.front_end.window_seconds, "hop_s": self.hop_seconds,
            "sample_rate": self.sample_rate, "backend": self.backend,
            "batch": len(batch.windows),
            "rms": rms, "peak": peak,
            "timings_ms": {key: batch.timings_ms.get(key, 0.0)
                           for key in ("features", "encoder", "generator", "cluster")
                           if key != "cluster" or key in batch.timings_ms},
        }

    def encode(self, result: Result) -> list[bytes]:
        """The multipart PUB message of one result (PNG, JPEG or raw payloads)."""
        return encode_frame(self.topic, result.header, result.images, result.uncertainty,
                            self.encoding, self.encoding_level)

    # --- one window (library form, a batch of one) ------------------------------------------

    def process_window(self, audio: np.ndarray, capture_time: float, stream_id: str = "main",
                       position_s: float | None = None
                       ) -> tuple[dict[str, Any], np.ndarray, np.ndarray | None]:
        """One 1-s window -> (header, K images uint8 [K,H,W,3], uncertainty [H,W] or None)."""
        window = Window(stream_id, np.asarray(audio, np.float32), capture_time, position_s)
        result = self.process_batch([window])[0]
        return result.header, result.images, result.uncertainty

    def message(self, audio: np.ndarray, capture_time: float, stream_id: str = "main",
                position_s: float | None = None) -> list[bytes]:
        window = Window(stream_id, np.asarray(audio, np.float32), capture_time, position_s)
        self.frames += 1
        return self.encode(self.process_batch([window])[0])


def single_threaded_blas() -> None:
    """Keep NumPy's BLAS (the front end's mel product) on one thread for this process.

    The stages already run features beside the model; a multi-threaded BLAS only adds
    threads that wait on each other (2 busy cores: the mel product took 25x longer and 30x
    the CPU). ONNX Runtime keeps its own thread pool.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)

