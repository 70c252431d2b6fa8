"""Named crash points: the process kills itself with SIGKILL where the environment says.

`crashpoint("cycle.launching.committed")` does nothing unless the environment variable
`AOSCORE_CRASHPOINT` names that point, as `name` (the first time it is reached) or `name:N`
(the N-th time). Then the process dies at once, as a power cut would take it: no cleanup,
no flush, no atexit. A power-cut matrix walks every point to prove that each durable boundary
resumes.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV_VAR = "AOSCORE_CRASHPOINT"

_reached: Counter[str] = Counter()


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


def crashpoint(name: str) -> None:
    """Die with SIGKILL if the environment names this point and this is the chosen arrival."""
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
