"""The matrix's interrupts: SIGINT and SIGTERM become KeyboardInterrupt, except inside a
`held()` block, where they wait for the block's end.

An interrupt unwinds the matrix through its `finally` blocks, which stop every process it
started. A process being started is the exception: an interrupt that lands between the fork
and the moment its handle is recorded would leave it running unseen. Starting a process
therefore happens inside `held()`; an interrupt that arrives meanwhile is raised as soon as
the handle is recorded.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

_held = 0
_pending: int | None = None


def _handler(signum: int, _frame: FrameType | None) -> None:
    global _pending
    if _held:
        _pending = signum
        return
    raise KeyboardInterrupt(f"signal {signum}")


def install() -> None:
    """Turn SIGINT and SIGTERM into KeyboardInterrupt, held inside `held()` blocks. Only from
    the main thread (Python's rule for signal handlers)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handler)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """Hold interrupts until the block ends; then raise one that came meanwhile.

    Raises:
        KeyboardInterrupt: an interrupt arrived inside the block (raised at its end).
    """
    global _held, _pending
    _held += 1
    try:
        yield
    finally:
        _held -= 1
        if not _held and _pending is not None:
            signum, _pending = _pending, None
            raise KeyboardInterrupt(f"signal {signum}")
