"""Named crash points: the process kills itself with SIGKILL where the environment says.

`crashpoint("cycle.launching.committed")` does nothing unless the environment variable
`AOSCORE_CRASHPOINT` names that point, as `name` (the first time it is reached) or `name:N`
(the N-th time). Then the process dies at once, as a power cut would take it: no cleanup,
no flush, no atexit. A power-cut matrix walks every point to prove that each durable boundary
resumes.

`AOSCORE_FAULT=name[:N]` makes the named arrival raise `InjectedFault` instead: an unexpected
error at a known place, so a test rig can drive the machine into its sticky failed phase (and
kill it there with a crash point) without a real bug.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV_VAR = "AOSCORE_CRASHPOINT"
FAULT_ENV_VAR = "AOSCORE_FAULT"

_reached: Counter[str] = Counter()
_faulted: Counter[str] = Counter()


class InjectedFault(RuntimeError):
    """Raised where `AOSCORE_FAULT` says: an unexpected error a test rig asked for."""


def parse_spec(spec: str) -> tuple[str, int]:
    """Split `name` or `name:N` into the point's name and which arrival kills (1-based).

    Raises:
        ValueError: N is not a positive integer, or the name is empty.
    """
    name, sep, nth = spec.strip().rpartition(":")
    if not sep:
        name, nth = spec.strip(), "1"
    if not name:
        raise ValueError(f"crash point spec {spec!r} has no name")
    if not nth.isdigit() or int(nth) < 1:
        raise ValueError(f"crash point spec {spec!r}: N must be a positive integer")
    return name, int(nth)


def committed_point(machine: str, phase: str) -> str:
    """The crash point passed right after `machine` committed its move into `phase`."""
    return f"{machine}.{phase}.committed"


def crashpoint(name: str) -> None:
    """Die with SIGKILL if the environment names this point and this is the chosen arrival;
    raise InjectedFault if the fault variable names it.

    Raises:
        InjectedFault: `AOSCORE_FAULT` names this point and arrival.
    """
    fault = os.environ.get(FAULT_ENV_VAR)
    if fault:
        target, nth = parse_spec(fault)
        if target == name:
            _faulted[name] += 1
            if _faulted[name] == nth:
                raise InjectedFault(f"fault injected at {name} (arrival {nth})")
    spec = os.environ.get(ENV_VAR)
    if not spec:
        return
    target, nth = parse_spec(spec)
    if target != name:
        return
    _reached[name] += 1
    if _reached[name] == nth:
        os.write(2, f"crashpoint.hit name={name} n={nth} pid={os.getpid()}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


def reached(name: str) -> int:
    """How many times `name` was reached in this process while it was armed (for tests)."""
    return _reached[name]
