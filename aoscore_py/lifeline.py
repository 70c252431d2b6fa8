"""Child processes that do not outlive their parent, even when it is killed with SIGKILL.

Linux's `PR_SET_PDEATHSIG` asks the kernel to signal a process when the thread that started it
exits; elsewhere nothing happens (the parent's clean shutdown still stops its children).
"""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGKILL) -> None:
    """Be sent `sig` when the parent goes (call in the child)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)


def dies_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for `subprocess.Popen`: the child gets `sig` when this process goes.
    Start such children from the main thread (the signal follows the thread that forked)."""
    if not sys.platform.startswith("linux"):
        return None
    return lambda: set_parent_death_signal(sig)
