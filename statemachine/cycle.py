"""The update cycle: download, stage, install, launch, wait until active, finalize.

Read the table top to bottom. Each working phase either finishes (`done`), fails in an
expected way and ends the cycle (`fail`, back to `none` with the failure reported), is
superseded by newer input (`supersede`, back to `downloading`), or hits an unexpected error
(`crash`, to the sticky `failed` phase, left only by new input). `waitingActive` also ends
on `timeout`, and still goes on to `finalizing` so nothing is left half done.
"""

from __future__ import annotations

from .graph import Graph


def _working(done: str, **extra: str) -> dict[str, str]:
    return {"done": done, **extra, "supersede": "downloading", "fail": "none", "crash": "failed"}


UPDATE_CYCLE = Graph(
    name="update-cycle",
    initial="none",
    resting=frozenset({"none", "failed"}),
    table={
        "none": {"start": "downloading"},
        "downloading": _working("pending"),
        "pending": _working("installing"),
        "installing": _working("launching"),
        "launching": _working("waitingActive"),
        "waitingActive": _working("finalizing", timeout="finalizing"),
        "finalizing": _working("none"),
        "failed": {"start": "downloading"},
    },
)

WORKING_PHASES = tuple(p for p in UPDATE_CYCLE.phases if p not in UPDATE_CYCLE.resting)
