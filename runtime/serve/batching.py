"""``Batching``: the batching settings of a server, one value from the flags to the stages.

Made once from ``--max-batch`` / ``--max-wait-ms`` (or the backend's defaults below, by
``runtime.serve.options.batching``) and given at construction to ``NetworkLoop``, which hands the
same value to its ``NetworkIngress`` (when to wake the batching stage) and its ``Stages`` (how
many windows one model call takes, how long a due window waits for company). Frozen: no
thread changes it.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.errors import S2IError


@dataclass(frozen=True)
class Batching:
    """``max_batch``: most windows in one model call (the stages may take fewer when the model
    is slow: ``Stages.batch_limit``); ``max_wait_s``: how long a due window may wait for
    company before its batch starts anyway."""

    max_batch: int = 1
    max_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int) \
                or self.max_batch < 1:
            raise S2IError(f"max batch must be a positive integer, got {self.max_batch!r}")
        if isinstance(self.max_wait_s, bool) or not isinstance(self.max_wait_s, (int, float)) \
                or not 0 <= self.max_wait_s <= 1:
            raise S2IError(f"max wait must be between 0 and 1 s, got {self.max_wait_s!r}")


ONE_AT_A_TIME = Batching()     # one window per model call, no waiting (s2i-stream's one stream)
# s2i-serve's defaults per backend class, when --max-batch / --max-wait-ms are not given
# (docs/RUNTIME.md, "Batching"); NetworkLoop's default is the CPU one.
CPU_DEFAULTS = Batching(64, 0.010)
GPU_DEFAULTS = Batching(512, 0.005)
