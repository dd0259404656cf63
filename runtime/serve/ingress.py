"""Where due windows come from: capture nodes over PULL, or one local ring buffer.

``NetworkIngress`` owns the PULL socket (used only by its own thread, ``run``): it decodes and
validates each audio message (``runtime.wire.protocol.decode_audio``), files it into its stream's
ring (at the model rate as it came, with no pass over it before the ring's copy; at another
rate resampled in pieces of ``RESAMPLE_PIECE_S``) and marks the stream due when its next hop
has arrived. ``RingIngress`` does
the same for one ring fed by a local source (``s2i-stream``). Both hand out due windows with
``take(max_batch, max_wait_s, stop)``: the newest window of each due stream, read when the
batch is formed, so a stream that fell behind skips its stale hops (counted) instead of
queueing them.

Everything per stream is bounded: at most ``max_streams`` streams (a newcomer past that is
refused, logged and counted), each with a fixed ring; an idle stream is forgotten after
``idle_expiry_s`` and its memory returned (``runtime.serve.memory``).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zmq

from runtime.audio.decode import StreamResampler
from runtime.audio.ring import AudioRing
from runtime.cli import RateLimitedLog, log
from runtime.errors import S2IError
from runtime.resilience import ConnectionWatch, survived
from runtime.serve import memory
from runtime.serve.batching import ONE_AT_A_TIME, Batching
from runtime.serve.pipeline import Window
from runtime.wire.protocol import MAX_AUDIO_PAYLOAD_BYTES, bind, decode_audio, sanitise_audio
from runtime.wire.security import NODES_DOMAIN, ServerSecurity, warn_if_open

DEFAULT_MAX_STREAMS = 1024
IDLE_EXPIRY_S = 30.0
TAKEOVER_S = 0.5          # a stream silent this long may be reset (a new node, a restart)
# Messages queued per connection (libzmq's HWM is per peer, so each node has its own share):
# at most PULL_RCVHWM x MAX_AUDIO_PAYLOAD_BYTES = 16 MiB per connection, 0.8 s of 50-ms blocks.
PULL_RCVHWM = 16
MAX_DRAIN = 2000          # messages read per pass, so a flood cannot starve the rest
POLL_MS = 20
RESAMPLE_PIECE_S = 0.25   # a stream at another rate goes through soxr in pieces this long
# The ingress is pure Python: busy, it keeps the GIL for up to a switch interval (5 ms) each
# time a stage thread returns from NumPy / ONNX Runtime and asks for it back (a GIL convoy:
# a batch's log-mel took twice as long beside a busy Python thread). It hands the GIL over
# every this many messages instead (docs/RUNTIME.md, "Overload").
YIELD_EVERY = 32
# While messages flow, the ingress sleeps this long after each drain and then reads what
# gathered: one wake-up (one timed wait, a GIL hand-over, libzmq's reader signal) for many
# messages instead of one each; quiet, it waits in poll. A timed wait costs 27-48 us of CPU on
# this project's 2-core VM (its timer exits), a message ~20 us. It adds at most this much to
# a frame's latency (docs/RUNTIME.md, "Wake-ups cost more than the work").
GATHER_S = 0.005


@dataclass
class StreamState:
    ring: AudioRing
    resampler: StreamResampler
    rate: int
    channels: int
    node: str
    next_total: int
    last_seq: int = -1
    last_seen: float = field(default_factory=time.monotonic)
    frames: int = 0           # windows handed out (the stream's next frame seq)
    skipped: int = 0          # stale hops skipped
    pending: list[np.ndarray] = field(default_factory=list)   # not yet resampled
    pending_frames: int = 0

    def hold(self, samples: np.ndarray, model_rate: int) -> np.ndarray | None:
        """Collect a message's samples; the collected block once it should reach the ring:
        at once at the model rate, else in pieces of ``RESAMPLE_PIECE_S`` (one soxr call
        each, not one per message) or as soon as the next window may be complete."""
        if not self.resampler.resamples:
            return samples
        self.pending.append(samples)
        self.pending_frames += len(samples)
        arriving = self.ring.written + self.pending_frames * model_rate / self.rate
        if self.pending_frames < RESAMPLE_PIECE_S * self.rate and arriving < self.next_total:
            return None
        block = self.pending[0] if len(self.pending) == 1 else np.concatenate(self.pending)
        self.pending.clear()
        self.pending_frames = 0
        return block


@dataclass
class IngressCounters:
    messages: int = 0
    bad_messages: int = 0
    refused_streams: int = 0      # new streams past --max-streams
    refused_duplicates: int = 0   # messages from a second node claiming a live stream id
    stale_seq: int = 0            # messages whose seq did not rise (duplicates): dropped
    unexpected_errors: int = 0    # messages dropped by an unexpected exception (a bug)
    restarts: int = 0
    expired: int = 0
    skipped: int = 0              # stale hops skipped, all streams

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def receive(pull: zmq.Socket) -> list[Any]:
    """One message, without waiting (``zmq.Again`` when none): its parts as bytes but the
    third, an audio payload, as a buffer read in place (the ring copies it). Part by part:
    ``recv_multipart(copy=False)`` wraps every part in a ``zmq.Frame`` (12 us against 10 for a
    250-ms message on this box)."""
    parts: list[Any] = [pull.recv(zmq.NOBLOCK)]
    while pull.get(zmq.RCVMORE):        # the rest of a message has arrived with its first part
        parts.append(pull.recv(copy=False).buffer if len(parts) == 2 else pull.recv())
    return parts


def next_pass(sock: zmq.Socket, gathering: bool) -> bool:
    """Wait for the next read of ``sock``; whether to read now. While messages flow
    (``gathering``: the last pass read some), sleep ``GATHER_S`` and read what gathered; quiet,
    wait in ``poll`` up to ``POLL_MS`` for one. The loop of the ingress and of the ``--workers``
    router."""
    if gathering:
        time.sleep(GATHER_S)
        return True
    return bool(sock.poll(POLL_MS, zmq.POLLIN))


def grid_end(source: Any, written: int, hop: int) -> int:
    """Where the window taken now ends: the last point of the hop grid (``window + n * hop``
    samples, from ``source.next_total``, the next one due) that has arrived. A stream that
    fell behind skips the hops before it (stale, never queued); ``position_s`` is this point
    / rate, exactly, so skipped hops show as jumps."""
    end = source.next_total
    if written > end:
        end += (written - end) // hop * hop
    return end


class DueStreams:
    """The streams whose next window is due, oldest first, shared by the ingress thread
    (``mark``) and the batching stage (``wait_batch``)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.due: OrderedDict[str, float] = OrderedDict()    # stream -> when it became due

    def mark(self, sid: str, max_batch: int = 1) -> None:
        """Call with ``self.cond`` held. Wakes the batching stage for the first due stream
        and when ``max_batch`` are due (in between, its own wait ends at the oldest's
        ``max_wait_s``)."""
        if sid not in self.due:
            self.due[sid] = time.monotonic()
            if len(self.due) == 1 or len(self.due) >= max_batch:
                self.cond.notify_all()

    def wait_batch(self, max_batch: int, max_wait_s: float, stop: threading.Event
                   ) -> list[tuple[str, float]]:
        """Up to ``max_batch`` due streams, once ``max_batch`` are due or the oldest has
        waited ``max_wait_s`` for company; [] when ``stop`` is set. Call with ``cond`` held."""
        while not stop.is_set():
            if self.due:
                oldest = next(iter(self.due.values()))
                left = oldest + max_wait_s - time.monotonic()
                if len(self.due) >= max_batch or left <= 0:
                    break
                self.cond.wait(min(left, 0.1))
            else:
                self.cond.wait(0.1)
        else:
            return []
        picked = []
        while self.due and len(picked) < max_batch:
            picked.append(self.due.popitem(last=False))
        return picked


class NetworkIngress:
    """PULL audio from capture nodes (one ring per stream id); hands out due windows."""

    def __init__(self, ctx: zmq.Context, bind_address: str, sample_rate: int, window: int,
                 hop: int, max_streams: int = DEFAULT_MAX_STREAMS,
                 idle_expiry_s: float = IDLE_EXPIRY_S, takeover_s: float = TAKEOVER_S,
                 security: ServerSecurity | None = None,
                 on_end: Callable[[str, str], None] | None = None,
                 batching: Batching = ONE_AT_A_TIME) -> None:
        if max_streams < 1:
            raise S2IError(f"--max-streams must be at least 1, got {max_streams}")
        self.sample_rate, self.window, self.hop = sample_rate, window, hop
        self.max_streams, self.idle_expiry_s, self.takeover_s = \
            max_streams, idle_expiry_s, takeover_s
        self.pull = ctx.socket(zmq.PULL)
        self.pull.setsockopt(zmq.LINGER, 0)
        self.pull.setsockopt(zmq.RCVHWM, PULL_RCVHWM)
        # A peer sending a part larger than any valid one (the payload cap; headers are at
        # most 2 KiB) is disconnected by libzmq: the watch below logs it.
        self.pull.setsockopt(zmq.MAXMSGSIZE, MAX_AUDIO_PAYLOAD_BYTES)
        if security is not None:
            security.secure(self.pull, NODES_DOMAIN)   # CURVE: only allowed capture nodes
        bind(self.pull, bind_address, "audio input (PULL)")
        warn_if_open(bind_address, "audio input (PULL)", curve=security is not None)
        self.address = self.pull.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.streams: dict[str, StreamState] = {}
        self.scheduler = DueStreams()
        self.counters = IngressCounters()
        self.batching = batching    # given once; the batching stage reads it, no one sets it
        self.on_end = on_end     # (stream, reason): a stream stopped or expired (protocol end)
        self.say = RateLimitedLog()
        self._next_expiry = time.monotonic() + 1.0
        self.cpu_s = 0.0        # this thread's CPU time (time.thread_time) while serving

    # --- the ingress thread ------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Read, validate and file audio until ``stop``; closes the PULL socket at the end."""
        self.watch = ConnectionWatch(self.pull, "audio input (PULL)", self.say,
                                     MAX_AUDIO_PAYLOAD_BYTES)
        start, gathering = time.thread_time(), False
        try:
            while not stop.is_set():
                count = self.drain() if next_pass(self.pull, gathering) else 0
                gathering = 0 < count < MAX_DRAIN
                if time.monotonic() >= self._next_expiry:
                    self.expire_idle()
                    self.watch.poll()
                    self._next_expiry = time.monotonic() + 1.0
                self.cpu_s = time.thread_time() - start
        finally:
            self.watch.close()
            self.pull.close(linger=0)

    def drain(self, limit: int = MAX_DRAIN) -> int:
        """Handle every pending message (at most ``limit``) without blocking."""
        count = 0
        while count < limit:
            try:
                parts = receive(self.pull)
            except zmq.Again:
                break
            self.handle(parts)
            count += 1
            if count % YIELD_EVERY == 0:
                time.sleep(0)           # let a stage thread waiting for the GIL take it
        return count

    def handle(self, parts: list[bytes]) -> str | None:
        """File one audio message into its stream's ring; returns the stream id, or None for
        a message that was refused (logged, rate-limited, and counted)."""
        self.counters.messages += 1
        try:
            return self._file(parts)
        except S2IError as exc:
            self.counters.bad_messages += 1
            # One line per kind of fault (its text without numbers), rate-limited.
            self.say("bad:" + re.sub(r"[0-9]+", "#", str(exc))[:60],
                     f"ignoring a bad audio message: {exc}")
        except Exception as exc:  # noqa: BLE001 - a bug costs only its message
            self.counters.unexpected_errors += 1
            survived(self.say, "the audio ingress", exc, self.counters.unexpected_errors,
                     "one audio message")
        return None

    def _file(self, parts: list[bytes]) -> str | None:
        header, samples = decode_audio(parts)
        if header["end"]:                   # the capture node stopped (protocol 2)
            return self._end(header)
        state = self._state(header)
        if state is None:
            return None
        block = state.hold(samples, self.sample_rate)
        if block is None:
            return header["stream"]
        if state.resampler.resamples and not np.isfinite(block).all():
            block = sanitise_audio(block)    # soxr would smear a NaN over its neighbours
        # At the model rate NaN/inf go into the ring as they came: the features stage
        # sanitises the whole batch in one pass (runtime.serve.pipeline.Pipeline.features).
        mono = state.resampler.process(block)
        sid = header["stream"]
        with self.scheduler.cond:
            if self.streams.get(sid) is not state:
                return None     # expired meanwhile (cannot happen: same thread), be safe
            state.ring.write(mono, header["capture_time"])
            if state.ring.written >= state.next_total:
                self.scheduler.mark(sid, self.batching.max_batch)
        return sid

    def _state(self, header: dict[str, Any]) -> StreamState | None:
        sid, node, seq = header["stream"], header["node"], header["seq"]
        rate, channels = header["sample_rate"], header["channels"]
        now = time.monotonic()
        state = self.streams.get(sid)
        live = state is not None and now - state.last_seen < self.takeover_s
        if state is not None and node != state.node:
            if live:
                self._refuse_duplicate(sid, node, state.node)
                return None
            self.say(f"takeover:{sid}", f"{sid}: now sent by node {node} (node {state.node} "
                                        "went silent)")
        elif state is not None and seq <= state.last_seq:
            # A duplicate or an old seq: dropped while the stream is live (a second node of
            # protocol 1 under the same id, a replay); after takeover_s of silence it is the
            # node starting again.
            if live:
                self.counters.stale_seq += 1
                return None
            self.counters.restarts += 1
            self.say(f"restart:{sid}", f"{sid}: capture node restarted (its seq went back "
                                       "after a silence); resetting its buffer")
        elif state is not None and (rate != state.rate or channels != state.channels):
            self.counters.restarts += 1
            self.say(f"restart:{sid}", f"{sid}: capture node changed rate or channels; "
                                       "resetting its buffer")
        elif state is not None:
            state.last_seq, state.last_seen = seq, now
            return state
        elif len(self.streams) >= self.max_streams:
            self.counters.refused_streams += 1
            self.say("max-streams", f"refusing new stream {sid!r}: --max-streams "
                                    f"{self.max_streams} streams are live "
                                    f"({self.counters.refused_streams} refused so far)")
            return None
        fresh = StreamState(AudioRing(2 * self.window),
                            StreamResampler(rate, self.sample_rate, channels),
                            rate, channels, node, self.window, seq, now)
        with self.scheduler.cond:
            if state is not None:
                fresh.frames = state.frames         # seq keeps rising for subscribers
                self.scheduler.due.pop(sid, None)
            self.streams[sid] = fresh
        return fresh

    def _end(self, header: dict[str, Any]) -> str | None:
        """A capture node's last message: forget its stream and announce the end."""
        sid = header["stream"]
        with self.scheduler.cond:
            state = self.streams.get(sid)
            if state is None or state.node != header["node"]:
                owner = "no live stream" if state is None else f"node {state.node} sends it"
                self.say(f"end:{sid}", f"ignoring the end of stream {sid!r} from node "
                                       f"{header['node']}: {owner}")
                return None
            del self.streams[sid]
            self.scheduler.due.pop(sid, None)
        if self.on_end is not None:
            self.on_end(sid, "node-stopped")
        return sid

    def _refuse_duplicate(self, sid: str, node: str, owner: str) -> None:
        self.counters.refused_duplicates += 1
        self.say(f"duplicate:{sid}", f"refusing audio for stream {sid!r} from node {node}: "
                                     f"node {owner} is already sending that stream id (give "
                                     "each capture node its own --stream-id)")

    def expire_idle(self) -> int:
        """Forget streams silent for ``idle_expiry_s``; returns how many."""
        now = time.monotonic()
        with self.scheduler.cond:
            gone = [s for s, st in self.streams.items()
                    if now - st.last_seen > self.idle_expiry_s]
            for sid in gone:
                del self.streams[sid]
                self.scheduler.due.pop(sid, None)
        if gone:
            self.counters.expired += len(gone)
            memory.trim()
            for sid in gone:
                if self.on_end is not None:
                    self.on_end(sid, "node-expired")
        return len(gone)

    # --- the batching stage -------------------------------------------------------------------

    def take(self, max_batch: int, max_wait_s: float, stop: threading.Event) -> list[Window]:
        """The newest window of up to ``max_batch`` due streams (waits for them)."""
        with self.scheduler.cond:
            picked = self.scheduler.wait_batch(max_batch, max_wait_s, stop)
            windows = []
            for sid, due_time in picked:
                state = self.streams.get(sid)
                if state is not None:
                    window = self._window(sid, state, due_time)
                    if window is not None:
                        windows.append(window)
            return windows

    def _window(self, sid: str, state: StreamState, due_time: float) -> Window | None:
        written = state.ring.written
        if written < state.next_total:
            return None
        end = grid_end(state, written, self.hop)
        skipped = (end - state.next_total) // self.hop
        state.skipped += skipped
        self.counters.skipped += skipped
        taken = state.ring.latest(self.window, end)
        state.next_total = end + self.hop
        if taken is None:
            return None
        audio, newest_time, written = taken
        window = Window(sid, audio, newest_time - (written - end) / self.sample_rate,
                        end / self.sample_rate, state.frames, due_time)
        state.frames += 1
        return window


class RingIngress:
    """One local ring (``s2i-stream``'s source) as a stream of due windows."""

    def __init__(self, ring: AudioRing, stream_id: str, sample_rate: int, window: int,
                 hop: int, finished: threading.Event | None = None) -> None:
        self.ring, self.stream_id, self.finished = ring, stream_id, finished
        self.sample_rate, self.window, self.hop = sample_rate, window, hop
        self.next_total, self.frames, self.skipped = window, 0, 0
        self.done = threading.Event()      # the source ended and every window was taken

    def take(self, max_batch: int, max_wait_s: float, stop: threading.Event) -> list[Window]:
        while not stop.is_set() and not self.done.is_set():
            if self.ring.wait_for(self.next_total, timeout=0.05):
                break
            if self.ring.closed or (self.finished is not None and self.finished.is_set()
                                    and self.ring.written < self.next_total):
                self.done.set()
                if self.frames == 0 and 0 < self.ring.written < self.window:
                    return [self._padded()]
        else:
            return []
        due_time = time.monotonic()
        end = grid_end(self, self.ring.written, self.hop)
        self.skipped += (end - self.next_total) // self.hop
        self.next_total = end + self.hop
        taken = self.ring.latest(self.window, end)
        if taken is None:           # overwritten meanwhile (cannot happen with a 4-window ring)
            return []
        audio, newest_time, written = taken
        window = Window(self.stream_id, audio, newest_time - (written - end) / self.sample_rate,
                        end / self.sample_rate, self.frames, due_time)
        self.frames += 1
        return [window]

    def _padded(self) -> Window:
        """An input shorter than one window ended: one window of it, zero-padded at the end
        (like a short file without --realtime); ``position_s`` is its real length."""
        written = self.ring.written
        audio, capture_time, _ = self.ring.latest(written)  # type: ignore[misc]
        log(f"{self.stream_id}: the input ended after {written / self.sample_rate:.2f} s, "
            f"shorter than one {self.window / self.sample_rate:g}-s window: published one "
            "zero-padded window")
        self.frames += 1
        return Window(self.stream_id, np.pad(audio, (0, self.window - written)), capture_time,
                      written / self.sample_rate, 0, time.monotonic())
