"""Audio sources: microphone (PyAudio), files (paced or as fast as possible) and raw PCM on stdin.

A live source hands mono float32 blocks at the model rate to ``sink(block, capture_time)``
(``capture_time`` = unix time of the block's last sample) from its own thread or PyAudio's
callback; the sink (a ring buffer or a bounded queue) never blocks, so capture never waits on
the stages after it. ``file_windows`` instead walks a file window by window for offline runs.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from runtime.audio.decode import StreamResampler, iter_audio_blocks, quiet_stderr
from runtime.config import switch
from runtime.errors import S2IError

Sink = Callable[[np.ndarray, float], None]
PCM_FORMATS = {"s16": (np.dtype("<i2"), 32768.0), "f32": (np.dtype("<f4"), 1.0)}
BLOCK_SECONDS = 0.05      # a live source's block (s2i-capture sends larger ones: --block-ms)


class Source:
    """A live source running in a background thread until stopped or exhausted."""

    name = "source"

    def __init__(self, sink: Sink, sample_rate: int, block_s: float = BLOCK_SECONDS) -> None:
        self.sink, self.sample_rate, self.block_s = sink, int(sample_rate), float(block_s)
        self.stop_event = threading.Event()
        self.finished = threading.Event()   # set when the source has nothing more to give
        self.error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Source:
        self._thread = threading.Thread(target=self._guarded, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _guarded(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the owner of the source
            self.error = exc
        finally:
            self.finished.set()

    def run(self) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class FileSource(Source):
    """A file played like a live source: blocks are released at the pace of a real clock."""

    name = "file-source"

    def __init__(self, sink: Sink, sample_rate: int, path: str, loop: bool = False,
                 block_s: float = BLOCK_SECONDS) -> None:
        super().__init__(sink, sample_rate, block_s)
        self.path, self.loop = path, loop
        # Decode the first block now so a bad file fails before anything starts.
        self._blocks = iter_audio_blocks(path, self.sample_rate)
        self._first = next(self._blocks)

    def run(self) -> None:
        step = max(1, int(self.sample_rate * self.block_s))
        start, played = time.monotonic(), 0
        blocks: Iterator[np.ndarray] = _chain_first(self._first, self._blocks)
        while not self.stop_event.is_set():
            for block in blocks:
                for i in range(0, len(block), step):
                    chunk = block[i:i + step]
                    played += len(chunk)
                    delay = start + played / self.sample_rate - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        return
                    self.sink(chunk, time.time())
            if not self.loop:
                return
            blocks = iter_audio_blocks(self.path, self.sample_rate)


def _chain_first(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    yield first
    yield from rest


class StdinSource(Source):
    """Raw interleaved PCM (``s16`` or ``f32`` little-endian) read from a binary stream."""

    name = "stdin-source"

    def __init__(self, sink: Sink, sample_rate: int, in_rate: int, channels: int,
                 pcm_format: str, stream: BinaryIO | None = None,
                 block_s: float = BLOCK_SECONDS) -> None:
        super().__init__(sink, sample_rate, block_s)
        if pcm_format not in PCM_FORMATS:
            raise S2IError(f"unknown PCM format {pcm_format!r}; expected one of "
                           f"{sorted(PCM_FORMATS)}")
        if in_rate <= 0 or channels <= 0:
            raise S2IError(f"stdin PCM needs --rate > 0 and --channels > 0, got {in_rate}, "
                           f"{channels}")
        self.dtype, self.scale = PCM_FORMATS[pcm_format]
        self.channels = channels
        self.stream = stream if stream is not None else sys.stdin.buffer
        self.resampler = StreamResampler(in_rate, sample_rate, channels)
        self.frame_bytes = self.dtype.itemsize * channels
        self.read_bytes = max(1, int(in_rate * self.block_s)) * self.frame_bytes

    def _read(self) -> bytes:
        """Up to ``read_bytes``; b"" at the end or once stopped. A real file descriptor (a
        pipe, a terminal) is waited on with ``select`` in 0.1-s steps, so an idle input never
        holds the thread (or the interpreter's stdin lock) in a read when we stop."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            fd = None
        if fd is None:
            return self.stream.read1(self.read_bytes) if hasattr(self.stream, "read1") \
                else self.stream.read(self.read_bytes)
        while not self.stop_event.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                return os.read(fd, self.read_bytes)
        return b""

    def run(self) -> None:
        pending = b""
        while not self.stop_event.is_set():
            data = self._read()
            if not data:
                break
            pending += data
            usable = len(pending) - len(pending) % self.frame_bytes
            raw, pending = pending[:usable], pending[usable:]
            if raw:
                samples = np.frombuffer(raw, self.dtype).astype(np.float32) / self.scale
                out = self.resampler.process(samples.reshape(-1, self.channels))
                if len(out):
                    self.sink(out, time.time())
        tail = self.resampler.process(np.zeros((0, self.channels), np.float32), last=True)
        if len(tail):
            self.sink(tail, time.time())


# --- microphone (PyAudio) -------------------------------------------------------------------

def _import_pyaudio() -> Any:
    try:
        import pyaudio
    except ImportError as exc:
        raise S2IError("microphone input needs PyAudio, which is not installed; "
                       "install it with `pip install s2i[mic]` (needs portaudio19-dev)") from exc
    return pyaudio


def open_pyaudio() -> Any:
    pyaudio = _import_pyaudio()
    with quiet_stderr():
        return pyaudio.PyAudio()


def input_devices(pa: Any) -> list[dict[str, Any]]:
    devices = []
    for i in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(i)
        if int(info.get("maxInputChannels", 0)) > 0:
            devices.append(info)
    return devices


def list_devices() -> list[str]:
    """One line per input device: ``index: name (channels, default rate)``."""
    pa = open_pyaudio()
    try:
        try:
            default = pa.get_default_input_device_info()["index"]
        except OSError:
            default = None
        return [f"{d['index']}: {d['name']} ({d['maxInputChannels']} ch, "
                f"{d['defaultSampleRate']:.0f} Hz){' [default]' if d['index'] == default else ''}"
                for d in input_devices(pa)]
    finally:
        pa.terminate()


def resolve_device(pa: Any, device: str | int | None) -> dict[str, Any]:
    """The device info for ``None`` (default input), an index or a (part of a) name."""
    devices = input_devices(pa)
    names = ", ".join(f"{d['index']}:{d['name']}" for d in devices) or "none"
    if device is None or device == "":
        try:
            return pa.get_default_input_device_info()
        except OSError as exc:
            if devices:
                return devices[0]
            raise S2IError("no microphone: no audio input device was found "
                           "(use --file or --stdin, or connect an input device)") from exc
    text = str(device).strip()
    if text.isdigit():
        for d in devices:
            if d["index"] == int(text):
                return d
        raise S2IError(f"unknown input device index {text}; input devices: {names}")
    exact = [d for d in devices if d["name"].lower() == text.lower()]
    partial = [d for d in devices if text.lower() in d["name"].lower()]
    if exact or partial:
        return (exact or partial)[0]
    raise S2IError(f"unknown input device {text!r}; input devices: {names} "
                   "(see --list-devices)")


class MicSource(Source):
    """PyAudio in callback mode: PortAudio's thread resamples and hands blocks to the sink."""

    name = "mic-source"

    def __init__(self, sink: Sink, sample_rate: int, device: str | int | None = None,
                 block_s: float = BLOCK_SECONDS) -> None:
        super().__init__(sink, sample_rate, block_s)
        self._pyaudio = _import_pyaudio()
        self._pa = open_pyaudio()
        self._stream = None
        try:
            self.device = resolve_device(self._pa, device)
            self._open()
        except BaseException:
            self._pa.terminate()
            raise

    def _open(self) -> None:
        pa, pyaudio = self._pa, self._pyaudio
        index = int(self.device["index"])
        max_ch = max(1, int(self.device["maxInputChannels"]))
        tries = [(self.sample_rate, 1), (int(self.device["defaultSampleRate"]), 1),
                 (int(self.device["defaultSampleRate"]), min(2, max_ch))]
        last: Exception | None = None
        for rate, channels in tries:
            resampler = StreamResampler(rate, self.sample_rate, channels)
            try:
                with quiet_stderr():
                    self._stream = pa.open(
                        format=pyaudio.paFloat32, channels=channels, rate=rate, input=True,
                        input_device_index=index, start=False,
                        frames_per_buffer=max(64, int(rate * self.block_s)),
                        stream_callback=self._callback_for(resampler, channels))
                self.in_rate, self.channels = rate, channels
                return
            except (OSError, ValueError) as exc:
                last = exc
        raise S2IError(f"cannot open input device {index}:{self.device['name']}: {last}")

    def _callback_for(self, resampler: StreamResampler, channels: int) -> Callable[..., Any]:
        def callback(data: bytes, frames: int, time_info: Any, status: int) -> tuple[None, int]:
            samples = np.frombuffer(data, np.float32).reshape(-1, channels)
            out = resampler.process(samples)
            if len(out):
                self.sink(out, time.time())
            flag = self._pyaudio.paComplete if self.stop_event.is_set() else \
                self._pyaudio.paContinue
            return None, flag
        return callback

    def start(self) -> MicSource:
        assert self._stream is not None
        self._stream.start_stream()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop and close the stream and PortAudio; safe to call more than once."""
        self.stop_event.set()
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.stop_stream()
            self._stream.close()
            self._stream = None
        if self._pa is not None:
            self._pa.terminate()
            self._pa = None
        self.finished.set()


# --- offline files --------------------------------------------------------------------------

def file_windows(path: str, sample_rate: int, window: int, hop: int
                 ) -> Iterator[tuple[np.ndarray, int]]:
    """Every window of a file, hop by hop: ``(window samples, end position in samples)``.

    A file shorter than one window gives one zero-padded window. Memory stays bounded: only
    the samples of the current window and the decoder's block are held.
    """
    buffer = np.zeros(0, np.float32)
    consumed = 0          # samples dropped from the front of buffer
    next_end = window
    for block in iter_audio_blocks(path, sample_rate):
        buffer = np.concatenate([buffer, block])
        while consumed + len(buffer) >= next_end:
            start = next_end - window - consumed
            yield buffer[start:start + window].copy(), next_end
            next_end += hop
            drop = max(0, next_end - window - consumed)
            buffer, consumed = buffer[drop:], consumed + drop
    total = consumed + len(buffer)
    if total < window and next_end == window:
        yield np.pad(buffer, (0, window - len(buffer))), total


# --- command line ---------------------------------------------------------------------------

SOURCE_TITLE = "audio source (pick one)"


@dataclass
class SourceOptions:
    """``--mic [--device D] | --file X [--realtime] | --stdin --rate R --channels C --format F``
    (the flag group of ``s2i-stream`` and ``s2i-capture``)."""

    mic: bool = switch("capture the microphone (PyAudio)")
    file: str | None = field(default=None, metadata={
        "metavar": "PATH", "help": "an audio or video file (wav/flac/ogg/mp3/mp4)"})
    stdin: bool = switch("raw interleaved PCM on stdin")
    list_devices: bool = switch("list input devices and exit")
    device: str | None = field(default=None, metadata={
        "metavar": "NAME|INDEX", "help": "input device (default: the default)"})
    realtime: bool = switch("play --file at the pace of a live source (default: as fast as "
                            "possible)")
    loop: bool = switch("repeat --file (with --realtime)")
    rate: int = field(default=16000, metadata={"help": "stdin sample rate (default: 16000)"})
    channels: int = field(default=1, metadata={"help": "stdin channels (default: 1)"})
    format: str = field(default="s16", metadata={
        "choices": sorted(PCM_FORMATS),
        "help": "stdin sample format: s16 or f32 little-endian (default: s16)"})


def chosen_source(options: SourceOptions) -> str:
    chosen = [name for name in ("mic", "file", "stdin") if getattr(options, name)]
    if len(chosen) != 1:
        raise S2IError("choose exactly one audio source: --mic, --file PATH or --stdin "
                       f"(got {', '.join('--' + c for c in chosen) or 'none'})")
    return chosen[0]


def open_live_source(options: SourceOptions, sink: Sink, sample_rate: int,
                     block_s: float = BLOCK_SECONDS) -> Source:
    """The live source the options ask for (a file is paced like a live source), handing
    out blocks of about ``block_s`` seconds."""
    kind = chosen_source(options)
    if options.loop and kind != "file":
        raise S2IError("--loop repeats a --file; it does not apply to --mic or --stdin")
    if kind == "mic":
        return MicSource(sink, sample_rate, options.device, block_s=block_s)
    if kind == "stdin":
        return StdinSource(sink, sample_rate, options.rate, options.channels, options.format,
                           block_s=block_s)
    assert options.file is not None
    return FileSource(sink, sample_rate, options.file, loop=options.loop, block_s=block_s)
