"""What a power-cut run yields, for the table, the JSON, the JUnit file and the HTML report: one
`Row` per cut, with the marks of its timeline (phases the CM entered, the kill, the file
system's cut, the restart, convergence), all in seconds from the row's start.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# What a mark records; the report draws each kind its own way.
PHASE = "phase"  # the CM entered a phase of the update cycle (label: the phase)
KILLED = "killed"  # a process died by SIGKILL (label: the process)
CUT = "cut"  # a file system dropped what was not durable (label: the mount)
RESTARTED = "restarted"  # a process was started again (label: the process)
CONVERGED = "converged"  # the unit converged (label: empty)
MARK_KINDS = (PHASE, KILLED, CUT, RESTARTED, CONVERGED)


@dataclass(frozen=True)
class Mark:
    """A moment of a row's timeline."""

    t: float  # seconds since the row started
    kind: str  # one of MARK_KINDS
    label: str = ""


@dataclass(frozen=True)
class Row:
    """One cut's result.

    `point` names the row (a crash point row, `random-N`, `node node-2 …`); `kind` says which
    part of the laboratory made it: `point` (the crash-point matrix), `random` (a cut at a
    pseudo-random moment), `node` (a whole node's power loss), `network` (a scenario under an
    impaired network). `fs` is `plain` or `lossy`.
    """

    point: str
    process: str
    killed: bool
    converged: bool
    seconds: float
    detail: str = ""
    kind: str = "point"
    fs: str = "plain"
    timeline: tuple[Mark, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return self.killed and self.converged
