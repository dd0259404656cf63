"""Giving freed per-stream memory back to the system (glibc; a no-op elsewhere).

glibc serves large blocks (a stream's ring buffer) with mmap, but raises that threshold each
time such a block is freed, so after the first expiry new rings come from the heap, whose
freed middle is rarely returned: the issue's 5,000 expired streams kept ~700 MB. Pinning the
threshold keeps big blocks in mmap (freed = returned); ``trim`` hands back free heap pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024

_libc: Any = None


def _glibc() -> Any:
    global _libc
    if _libc is None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc = libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else False
        except OSError:
            _libc = False
    return _libc


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every block of ``nbytes`` or more by mmap (returned to the system when freed)."""
    libc = _glibc()
    return bool(libc) and bool(libc.mallopt(M_MMAP_THRESHOLD, int(nbytes)))


def trim() -> None:
    """Return free heap memory to the system."""
    libc = _glibc()
    if libc:
        libc.malloc_trim(0)
