"""The pipelined stages of the server and of ``s2i-stream``, joined by bounded queues.

    source.take()  --[batch]-->  features  --q(1)-->  model  --q(2)-->  encode + publish
    (due windows)                (log-mel,            (one encoder      (PNG in a small
                                  vectorised)          + one generator   thread pool, then
                                                       call per batch)   PUB in order)

Each stage is a thread: the heavy work (NumPy FFTs, ONNX Runtime / TensorRT calls, zlib)
releases the GIL. The queues hold at most one or two batches, so nothing queues without
limit: while the model is busy, due streams gather in the source and form the next, larger
batch (dynamic batching); a stream that falls behind has its stale hops skipped in the
source. ``--max-batch`` caps a batch; ``--max-wait-ms`` is how long a due window may wait for
company before its batch starts anyway: both are one ``runtime.serve.batching.Batching``, given
at construction.
"""

from __future__ import annotations

import math
import queue
import statistics
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from runtime.cli import RateLimitedLog, log
from runtime.errors import first_line
from runtime.resilience import guarded, survived
from runtime.serve.batching import ONE_AT_A_TIME, Batching
from runtime.serve.pipeline import Batch, Pipeline, Result, Window, single_threaded_blas
from runtime.wire.protocol import Publisher

END = None                # sent down the queues when the source has ended
BUDGET_HOPS = 0.4         # a batch's model time stays within this many hops
# A result is stale, and dropped instead of published, when its window became due more than
# max(STALE_MIN_S, STALE_FACTOR x the median age of recent results) ago: a model call that
# hung (a cluster with no replica left, a stalled GPU) must not publish pictures of sound
# from seconds ago. The median follows a model that is slow all the time, so that one still
# publishes; judged only once STALE_HISTORY_MIN results were measured.
STALE_MIN_S = 3.0
STALE_FACTOR = 4.0
STALE_HISTORY = 32
STALE_HISTORY_MIN = 4
STATUS_EVERY_S = 10.0
# Host CPU is counted per stage with thread CPU clocks (time.thread_time); "model" is the
# translator call's own thread (ONNX Runtime's pool threads are not in it), the rest is the
# host work around it: forming batches (ring reads), features, split (uint8 images and the
# headers), encode (PNG/raw payloads) and publish (PUB sends).
CPU_STAGES = ("batching", "features", "model", "split", "encode", "publish")


class WindowSource(Protocol):
    def take(self, max_batch: int, max_wait_s: float, stop: threading.Event
             ) -> list[Window]: ...


@dataclass
class StageCounters:
    batches: int = 0
    frames: int = 0
    failed_batches: int = 0
    dropped_windows: int = 0          # windows of failed batches (not published)
    unexpected_errors: int = 0        # batches or frames dropped by an unexpected exception
    stale_windows: int = 0            # results too old to publish (dropped, like skipped hops)
    batch_sizes: Counter[int] = field(default_factory=Counter)     # at most max_batch keys
    busy_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("features", "model", "publish"), 0.0))
    cpu_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CPU_STAGES, 0.0))

    def add_cpu(self, stage: str, since: float) -> float:
        """Adds this thread's CPU time since ``since`` (``time.thread_time``) to ``stage``;
        returns the clock's reading (the next ``since``). One writer per stage."""
        now = time.thread_time()
        self.cpu_s[stage] += now - since
        return now

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "frames": self.frames,
                "failed_batches": self.failed_batches,
                "dropped_windows": self.dropped_windows,
                "unexpected_errors": self.unexpected_errors,
                "stale_windows": self.stale_windows,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "busy_s": {k: round(v, 3) for k, v in self.busy_s.items()},
                "cpu_s": {k: round(v, 4) for k, v in self.cpu_s.items()}}


class Stages:
    """Runs ``source`` -> features -> model -> encode + publish until ``stop`` or the
    source's end. ``publisher`` is used only by the publishing thread once started."""

    def __init__(self, pipeline: Pipeline, source: WindowSource, publisher: Publisher,
                 batching: Batching = ONE_AT_A_TIME, encode_threads: int = 2,
                 on_published: Callable[[Result], None] | None = None) -> None:
        self.pipeline, self.source, self.publisher = pipeline, source, publisher
        self.batching = batching
        # A batch should take at most this long in the model (latency stays near two of
        # them); the cap follows the measured model time per window.
        self.budget_s = BUDGET_HOPS * pipeline.hop_seconds
        self.per_window_s: float | None = None
        self.encode_threads = max(1, int(encode_threads))
        self.on_published = on_published
        self.counters = StageCounters()
        self.ages: deque[float] = deque(maxlen=STALE_HISTORY)   # due -> result, seconds
        self.say = RateLimitedLog()
        self.features_q: queue.Queue[Batch | None] = queue.Queue(maxsize=1)
        # The next batch is formed only once the model has taken the previous one: windows
        # are read from the rings as late as possible and at most one batch waits.
        self.model_free = threading.Semaphore(1)
        self.publish_q: queue.Queue[list[Result] | None] = queue.Queue(maxsize=2)
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.finished = threading.Event()    # the publisher has sent everything it will send

    # --- lifecycle ------------------------------------------------------------------------

    def start(self, stop: threading.Event,
              only: tuple[str, ...] = ("features", "model", "publish")) -> None:
        """Start the stage threads (``only``: some of them; an ``s2i-serve --workers`` worker
        runs the publishing stage alone, fed through ``put_results``)."""
        self.stop = stop
        single_threaded_blas()
        for name, target in (("features", self._features), ("model", self._model),
                             ("publish", self._publish)):
            if name not in only:
                continue
            thread = threading.Thread(target=guarded(name, target, self.errors, stop),
                                      name=f"s2i-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _survive(self, where: str, exc: BaseException, lost: str) -> None:
        """An unexpected exception that costs only the batch or frame at hand."""
        self.counters.unexpected_errors += 1
        survived(self.say, where, exc, self.counters.unexpected_errors, lost)

    def wait(self, stop: threading.Event, tick_s: float = 0.2,
             on_tick: Callable[[], None] | None = None) -> None:
        """Block until ``stop`` or the end of the source; raises the one-line ``S2IError`` of
        a thread that could not go on."""
        while not stop.wait(tick_s) and not self.finished.is_set():
            if on_tick is not None:
                on_tick()
        if self.errors:
            raise self.errors[0]

    def join(self, timeout_s: float = 0.8) -> bool:
        """Wait for the stage threads (they see ``stop`` within ~0.1 s unless inside a model
        call); True if all ended."""
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def batch_limit(self) -> int:
        """``max_batch``, lowered so that one batch fits the latency budget when the model
        is slow: the other due streams wait for the next batch, which takes their newest
        window (their stale hops are skipped and counted, never queued)."""
        if self.per_window_s is None or self.per_window_s <= 0:
            return self.batching.max_batch
        return max(1, min(self.batching.max_batch, int(self.budget_s / self.per_window_s)))

    def _measured(self, windows: int, seconds: float) -> None:
        per_window = seconds / max(1, windows)
        self.per_window_s = per_window if self.per_window_s is None \
            else 0.7 * self.per_window_s + 0.3 * per_window

    def fresh(self, batch: Batch, results: list[Result]) -> list[Result]:
        """The results worth publishing: a stale one (see STALE_MIN_S) is dropped and counted
        (``stale_windows``, reported with the skipped hops); its seq is then not published."""
        now = time.monotonic()
        ages = [now - window.due_time for window in batch.windows]
        limit = max(STALE_MIN_S, STALE_FACTOR * statistics.median(self.ages)) \
            if len(self.ages) >= STALE_HISTORY_MIN else math.inf
        self.ages.extend(ages)
        if max(ages) <= limit:
            return results
        kept = [r for r, age in zip(results, ages, strict=True) if age <= limit]
        self.counters.stale_windows += len(results) - len(kept)
        self.say("stale", f"dropped {len(results) - len(kept)} result(s) {max(ages):.1f} s "
                          f"after their window was due (over {limit:.1f} s: a model call hung or "
                          f"stalled); {self.counters.stale_windows} stale so far")
        return kept

    def _put(self, q: queue.Queue[Any], item: Any) -> bool:
        """Blocking put that gives up when ``stop`` is set (a bounded queue's back-pressure)."""
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def put_results(self, results: list[Result]) -> bool:
        """Hand results to the publishing stage (blocks while its queue is full; False once
        ``stop`` is set)."""
        return self._put(self.publish_q, results)

    def _get(self, q: queue.Queue[Any]) -> tuple[bool, Any]:
        while not self.stop.is_set():
            try:
                return True, q.get(timeout=0.1)
            except queue.Empty:
                if threading.current_thread().name == "s2i-publish":
                    self.publisher.poll_subscriptions()
        return False, None

    # --- the stages -----------------------------------------------------------------------

    def _features(self) -> None:
        try:
            self._feature_batches()
        finally:        # the publisher ends after whatever is queued, also on an error
            self._put(self.features_q, END)

    def _feature_batches(self) -> None:
        while not self.stop.is_set():
            if not self.model_free.acquire(timeout=0.1):
                continue
            clock = time.thread_time()
            windows = self.source.take(self.batch_limit(), self.batching.max_wait_s, self.stop)
            clock = self.counters.add_cpu("batching", clock)
            if not windows:
                self.model_free.release()
                if getattr(self.source, "done", None) is not None and self.source.done.is_set():
                    return
                continue
            start = time.perf_counter()
            try:
                batch = self.pipeline.features(Batch(windows))
            except Exception as exc:  # noqa: BLE001 - one failed batch costs only itself
                self.model_free.release()
                self.counters.dropped_windows += len(windows)
                self._survive("the features stage", exc, f"{len(windows)} window(s)")
                continue
            finally:
                self.counters.busy_s["features"] += time.perf_counter() - start
                self.counters.add_cpu("features", clock)
            if not self._put(self.features_q, batch):
                return

    def _model(self) -> None:
        while True:
            ok, batch = self._get(self.features_q)
            if not ok:
                return
            if batch is END:
                self._put(self.publish_q, END)
                return
            self.model_free.release()          # the batcher may now form the next batch
            start, clock = time.perf_counter(), time.thread_time()
            try:
                out = self.pipeline.infer(batch)
                clock = self.counters.add_cpu("model", clock)
                results = self.pipeline.split(batch, out)
                self.counters.add_cpu("split", clock)
            except Exception as exc:  # noqa: BLE001 - one failed batch costs only itself
                self.counters.failed_batches += 1
                self.counters.dropped_windows += len(batch.windows)
                self.say("model", f"a batch of {len(batch.windows)} window(s) failed in the "
                                  f"model and was dropped ({self.counters.dropped_windows} "
                                  f"so far): {first_line(exc, with_type=True)}")
                continue
            finally:
                self.counters.busy_s["model"] += time.perf_counter() - start
            self._measured(len(batch.windows), time.perf_counter() - start)
            self.counters.batches += 1
            self.counters.batch_sizes[len(batch.windows)] += 1
            results = self.fresh(batch, results)
            if results and not self._put(self.publish_q, results):
                return

    def _publish(self) -> None:
        pool = ThreadPoolExecutor(self.encode_threads, thread_name_prefix="s2i-encode") \
            if self.encode_threads > 1 and self.pipeline.encoding != "raw" else None
        try:
            while True:
                ok, results = self._get(self.publish_q)
                if not ok or results is END:
                    return
                start = time.perf_counter()
                encoded = self._encoded(results, pool)
                clock = time.thread_time()
                for result, item in zip(results, encoded, strict=True):
                    try:
                        if item is None:
                            continue
                        parts, cpu_s = item
                        self.counters.cpu_s["encode"] += cpu_s
                        # the header's stream and seq as the result has them (not re-parsed)
                        self.publisher.publish(parts, result.header.get("stream"),
                                               result.header.get("seq"))
                        self.counters.frames += 1
                        if self.on_published is not None:
                            self.on_published(result)
                    except Exception as exc:  # noqa: BLE001 - costs only this frame
                        self._survive("the publish stage", exc, "one frame")
                self.counters.add_cpu("publish", clock)
                self.counters.busy_s["publish"] += time.perf_counter() - start
        finally:
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
            self.finished.set()


    def _encoded(self, results: list[Result], pool: ThreadPoolExecutor | None
                 ) -> list[tuple[list[bytes], float] | None]:
        """Each result's message and the CPU time its encoding took (in whichever thread),
        or None for one whose encoding failed (logged)."""
        def encode(result: Result) -> tuple[list[bytes], float] | None:
            clock = time.thread_time()
            try:
                return self.pipeline.encode(result), time.thread_time() - clock
            except Exception as exc:  # noqa: BLE001 - costs only this frame
                self._survive("the encoding of a frame", exc, "one frame")
                return None

        if pool is not None and len(results) > 1:
            return list(pool.map(encode, results))
        return [encode(r) for r in results]


class StatusLine:
    """A one-line summary on stderr every ``every_s`` seconds while frames flow."""

    def __init__(self, every_s: float = STATUS_EVERY_S) -> None:
        self.every_s, self.last = every_s, None
        self._next = time.monotonic() + every_s

    def update(self, result: Result) -> None:
        self.last = result.header
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + self.every_s
        h = result.header
        t = h.get("timings_ms", {})
        log(f"last frame: seq {h.get('seq')} of {h.get('stream')} in a batch of "
            f"{h.get('batch', 1)}, " + ", ".join(f"{k} {v:.1f} ms" for k, v in t.items())
            + f", capture->model done "
            f"{1000 * (time.time() - h['capture_time']):.0f} ms, peak {h.get('peak', 0):.2f}")


def run_stages(pipeline: Pipeline, source: WindowSource, publisher: Publisher,
               stop: threading.Event, batching: Batching = ONE_AT_A_TIME,
               encode_threads: int = 1) -> Stages:
    """Run the stages in threads until ``stop`` or the source's end; returns them (for their
    counters). The calling thread only waits."""
    status = StatusLine()
    stages = Stages(pipeline, source, publisher, batching, encode_threads,
                    on_published=status.update)
    local_stop = threading.Event()
    stages.start(local_stop)
    try:
        stages.wait(stop)
    finally:
        local_stop.set()
        stages.join(5.0)
    return stages


# --- the single-stream drivers (s2i-stream, benchmarks) --------------------------------------

def run_ring(pipeline: Pipeline, publisher: Publisher, ring: Any, stop: threading.Event,
             stream_id: str = "main", finished: threading.Event | None = None) -> int:
    """Every hop, the newest window of a live ring, through the same stages as the server
    (a batch of one stream); skips ahead (never queues) when late. Returns frames published."""
    from runtime.serve.ingress import RingIngress

    source = RingIngress(ring, stream_id, pipeline.sample_rate, pipeline.window, pipeline.hop,
                         finished)
    stages = run_stages(pipeline, source, publisher, stop)
    if source.skipped:
        log(f"{stream_id}: skipped {source.skipped} late hops (the model is slower than the hop)")
    return stages.counters.frames


def run_file(pipeline: Pipeline, publisher: Publisher, path: str, stop: threading.Event,
             stream_id: str = "main") -> int:
    """Every window of a file, as fast as the model allows; returns the frames published."""
    from runtime.audio.sources import file_windows

    count = 0
    for window, end in file_windows(path, pipeline.sample_rate, pipeline.window, pipeline.hop):
        if stop.is_set():
            break
        # A file's window is "captured" when it has been decoded; position_s says where.
        result = pipeline.process_batch([Window(stream_id, window, time.time(),
                                                end / pipeline.sample_rate)])[0]
        publisher.publish(pipeline.encode(result), result.header["stream"],
                          result.header["seq"])
        count += 1
    return count
