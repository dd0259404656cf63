"""Decode audio/video files to mono float32 at the model rate; resample live audio (soxr).

``load_audio(path, rate)`` reads a whole file; ``iter_audio_blocks(path, rate)`` yields it in
blocks (soundfile for wav/flac/ogg/mp3, PyAV for mp4 and anything else FFmpeg reads).
``StreamResampler`` mixes down and resamples a live stream block by block (soxr.ResampleStream).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soxr

from runtime.errors import S2IError

SOUNDFILE_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"}
BLOCK_SECONDS = 0.5


def to_mono(samples: np.ndarray) -> np.ndarray:
    """``[n]`` or ``[n, channels]`` -> mono float32 ``[n]`` (channel mean; one channel is a
    view, no pass over the samples)."""
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.shape[1] == 1:
        return samples[:, 0]
    return samples.mean(axis=1, dtype=np.float32)


class StreamResampler:
    """Interleaved/2-D blocks at ``in_rate`` with ``channels`` -> mono float32 at ``out_rate``."""

    def __init__(self, in_rate: float, out_rate: float, channels: int = 1) -> None:
        if in_rate <= 0 or out_rate <= 0 or channels < 1:
            raise S2IError(f"resampler needs positive rates and channels, got {in_rate} Hz -> "
                           f"{out_rate} Hz, {channels} channel(s)")
        self.in_rate, self.out_rate, self.channels = float(in_rate), float(out_rate), channels
        self._stream = (None if self.in_rate == self.out_rate
                        else soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32"))

    @property
    def resamples(self) -> bool:
        """False when the rates match: ``process`` only mixes down (or passes through)."""
        return self._stream is not None

    def process(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        if block.ndim == 1 and self.channels > 1:
            block = block[: len(block) - len(block) % self.channels].reshape(-1, self.channels)
        mono = np.ascontiguousarray(to_mono(block))
        if self._stream is None:
            return mono
        return self._stream.resample_chunk(mono, last=last)


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Hide what C libraries (PortAudio, ALSA, mpg123) print on fd 2 while probing."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _decode_soundfile(path: Path) -> tuple[Iterator[np.ndarray], int, int] | None:
    """(blocks, rate, channels) via libsndfile, or None when it cannot read the file."""
    import soundfile as sf

    try:
        with quiet_stderr():
            info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    if info.frames == 0:
        raise S2IError(f"audio file {path} is empty (no samples)")
    block = max(1, int(info.samplerate * BLOCK_SECONDS))

    def blocks() -> Iterator[np.ndarray]:
        try:
            yield from sf.blocks(str(path), blocksize=block, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise S2IError(f"cannot decode {path}: {exc}") from exc

    return blocks(), info.samplerate, info.channels


def _decode_pyav(path: Path) -> tuple[Iterator[np.ndarray], int, int]:
    """(blocks, rate, channels) via FFmpeg (PyAV): video containers, mp3, m4a, anything else."""
    import av

    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise S2IError(f"cannot read {path} as audio or video: "
                       f"{getattr(exc, 'strerror', None) or exc}") from exc
    if not container.streams.audio:
        container.close()
        raise S2IError(f"{path} has no audio track")
    stream = container.streams.audio[0]
    rate = int(stream.codec_context.sample_rate or stream.rate or 0)
    channels = int(stream.codec_context.channels or 1) if hasattr(
        stream.codec_context, "channels") else int(stream.layout.nb_channels)
    if rate <= 0:
        container.close()
        raise S2IError(f"{path}: its audio track has no sample rate")
    converter = av.AudioResampler(format="fltp")  # planar float32, same rate and layout

    def blocks() -> Iterator[np.ndarray]:
        try:
            for frame in container.decode(stream):
                for out in converter.resample(frame):
                    yield out.to_ndarray().T  # [n, channels]
        except av.error.FFmpegError as exc:
            raise S2IError(f"cannot decode {path}: {exc}") from exc
        finally:
            container.close()

    return blocks(), rate, channels


def iter_audio_blocks(path: str | Path, sample_rate: int) -> Iterator[np.ndarray]:
    """Blocks of mono float32 audio at ``sample_rate`` from any audio or video file."""
    path = Path(path)
    if not path.exists():
        raise S2IError(f"audio file not found: {path}")
    if not path.is_file():
        raise S2IError(f"audio path is not a file: {path}")
    decoded = _decode_soundfile(path) if path.suffix.lower() in SOUNDFILE_SUFFIXES else None
    blocks, rate, channels = decoded or _decode_pyav(path)
    resampler = StreamResampler(rate, sample_rate, channels)
    produced = 0
    for block in blocks:
        out = resampler.process(block)
        produced += len(out)
        if len(out):
            yield out
    tail = resampler.process(np.zeros((0, channels), np.float32), last=True)
    produced += len(tail)
    if len(tail):
        yield tail
    if produced == 0:
        raise S2IError(f"audio file {path} is empty (no samples)")


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """A whole file as mono float32 at ``sample_rate``."""
    audio = np.concatenate(list(iter_audio_blocks(path, sample_rate)))
    if not np.isfinite(audio).all():
        raise S2IError(f"audio file {path} holds NaN or infinite samples")
    return audio
