"""Every crash point of the agent, collected from the components that declare them.

Each component lists its points as constants in its own `crashpoints.py`; the update cycle's
machine passes `<machine>.<phase>.committed` after every committed move. This registry is the
one list the matrix is built from, and a test fails when a `crashpoint()` call names a point
that is not here, or when a point here has no row in the matrix.
"""

from __future__ import annotations

from statemachine import UPDATE_CYCLE, Graph, committed_point

from ..blobs import crashpoints as blobs
from ..cm.communication import crashpoints as link
from ..cm.imagemanager import crashpoints as imagemanager
from ..cm.launcher import crashpoints as launcher
from ..cm.updatemanager import crashpoints as updatemanager
from ..cm.updatemanager.handler import MACHINE
from ..sm import crashpoints as sm
from ..storage import crashpoints as storage


def machine_points(machine: str, graph: Graph) -> tuple[str, ...]:
    """The points a durable machine passes: one after each committed move into a phase."""
    return tuple(committed_point(machine, phase) for phase in graph.phases)


# Component -> its points, in the order an update cycle first reaches them.
REGISTRY: dict[str, tuple[str, ...]] = {
    "storage": storage.CRASH_POINTS,
    "updatemanager": updatemanager.CRASH_POINTS,
    MACHINE: machine_points(MACHINE, UPDATE_CYCLE),
    "imagemanager": imagemanager.CRASH_POINTS,
    "blobs": blobs.CRASH_POINTS,
    "launcher": launcher.CRASH_POINTS,
    "sm": sm.CRASH_POINTS,
    "link": link.CRASH_POINTS,
}

ALL_POINTS: tuple[str, ...] = tuple(p for points in REGISTRY.values() for p in points)
