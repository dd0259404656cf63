"""A fixed-size, thread-safe ring buffer of mono audio with capture timestamps.

Writers (a PyAudio callback, a file pacer, a socket reader) never wait: the oldest samples
are overwritten. Readers ask for "the last ``n`` samples" together with the capture time of
the newest sample, or wait until a given total sample count has been written.
"""

from __future__ import annotations

import threading

import numpy as np


class AudioRing:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("ring capacity must be at least one sample")
        self.capacity = int(capacity)
        self._data = np.zeros(self.capacity, np.float32)
        self._written = 0              # total samples ever written
        self._last_time = 0.0          # capture time (unix s) of the newest sample
        self._closed = False
        self._cond = threading.Condition()

    @property
    def written(self) -> int:
        with self._cond:
            return self._written

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    def write(self, samples: np.ndarray, capture_time: float) -> None:
        """Append mono samples; ``capture_time`` is the time of the LAST sample of the block."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = len(samples)
        if n == 0:
            return
        if n > self.capacity:
            samples = samples[-self.capacity:]
        with self._cond:
            start = (self._written + n - len(samples)) % self.capacity
            first = min(len(samples), self.capacity - start)
            self._data[start:start + first] = samples[:first]
            self._data[: len(samples) - first] = samples[first:]
            self._written += n
            self._last_time = float(capture_time)
            self._cond.notify_all()

    def close(self) -> None:
        """No more samples will come (end of file, stream stopped); wakes waiting readers."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def latest(self, n: int, end: int | None = None) -> tuple[np.ndarray, float, int] | None:
        """(the newest ``n`` samples, capture time of the last one, total written) or None.

        ``end``: the ``n`` samples that end at that total instead (the capture time is still
        the newest sample's); None if they are not all in the ring (yet, or any more)."""
        if n > self.capacity:
            raise ValueError(f"asked for {n} samples from a ring of {self.capacity}")
        with self._cond:
            stop = self._written if end is None else end
            if stop < n or stop > self._written or self._written - (stop - n) > self.capacity:
                return None
            start = stop % self.capacity
            if start >= n:               # one slice, else the wrapped tail and head
                out = self._data[start - n:start].copy()
            else:
                out = np.concatenate((self._data[self.capacity - (n - start):],
                                      self._data[:start]))
            return out, self._last_time, self._written

    def wait_for(self, total: int, timeout: float | None = None) -> bool:
        """Wait until ``total`` samples have been written in all; False on timeout or close."""
        with self._cond:
            self._cond.wait_for(lambda: self._written >= total or self._closed, timeout)
            return self._written >= total
