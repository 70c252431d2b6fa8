"""Giving freed heap memory back to the system (glibc's `malloc_trim`).

CPython hands large freed buffers back to the C allocator, which keeps their pages for reuse:
after a burst (a reconnect storm in which each connection inflates a compressed frame to its
16 MiB limit before it is refused), the process's resident size stays at the burst's peak for
ever, though nothing holds the memory. `trim()` returns those pages; elsewhere than glibc it is
a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import cache

from .logs import get_logger

log = get_logger("heap")


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc


def trim() -> bool:
    """Return the heap's free pages to the system; whether it could."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(ctypes.c_size_t(0))
    return True


def release() -> bool:
    """Free what only reference cycles still hold (a failed connection's exception, its
    traceback and the frames that held its buffers), then `trim`."""
    gc.collect()
    return trim()
