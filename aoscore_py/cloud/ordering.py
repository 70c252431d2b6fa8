"""Reading a unit's timeline in the unit's own order: its `bootId` and `seq`.

Every unit status carries the boot it came from and a `seq` that only grows, across restarts
too. Records arrive in network order; sorted by `seq`, a number seen twice is a duplicate (a
resend the cloud recorded again) and, within one boot, a number skipped is a gap: a status the
unit made that never reached the cloud. Between boots, numbers jump by design (each boot
reserves a fresh block), so that is not a gap; nor are the numbers a full status names in its
`foldedSeqs` (statuses a full outbox replaced by it, documented folding).

`unit_view` is what the cloud knows of the unit now: the latest full status in unit order, with
the sections of every later delta laid over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SECTIONS = ("unitConfig", "nodes", "items", "instances", "subjects")


@dataclass(frozen=True)
class Ordered:
    """One recorded status in the unit's order, with what is odd about it."""

    record: dict[str, Any]
    boot_id: str | None
    seq: int | None
    duplicate: bool = False
    gap_before: int = 0  # statuses of the same boot missing just before this one
    late: bool = False  # arrived after one with a greater seq


def in_unit_order(records: Sequence[dict[str, Any]]) -> list[Ordered]:
    """The timeline's unit statuses sorted by `seq` (records without one keep arrival order,
    first), each flagged duplicate, late, or with the gap before it."""
    out: list[Ordered] = []
    best = -1
    keyed = []
    for index, record in enumerate(records):
        status = record.get("unitStatus") or {}
        seq = status.get("seq")
        seq = seq if isinstance(seq, int) else None
        late = seq is not None and seq < best
        if seq is not None:
            best = max(best, seq)
        keyed.append((seq if seq is not None else -1, index, record, status, late))
    keyed.sort(key=lambda k: (k[0], k[1]))
    folded = {
        n
        for k in keyed
        for first, last in _pairs(k[3].get("foldedSeqs"))
        for n in range(first, last + 1)
    }
    seen: set[int] = set()
    previous: tuple[str | None, int] | None = None
    for seq, _, record, status, late in keyed:
        boot = status.get("bootId")
        number = None if seq < 0 else seq
        duplicate = number is not None and number in seen
        gap = 0
        if number is not None and not duplicate:
            seen.add(number)
            if previous is not None and previous[0] == boot and number > previous[1] + 1:
                skipped = range(previous[1] + 1, number)
                gap = sum(1 for n in skipped if n not in folded)
            previous = (boot, number)
        out.append(Ordered(record, boot, number, duplicate, gap, late))
    return out


def summary(ordered: Sequence[Ordered]) -> dict[str, int]:
    """Counts an operator reads first: statuses, boots, duplicates, late ones, missing."""
    return {
        "statuses": len(ordered),
        "boots": len({o.boot_id for o in ordered if o.boot_id}),
        "duplicates": sum(o.duplicate for o in ordered),
        "late": sum(o.late for o in ordered),
        "missing": sum(o.gap_before for o in ordered),
    }


def _pairs(value: object) -> list[tuple[int, int]]:
    """The well-formed [first, last] pairs of a `foldedSeqs` value (others are ignored)."""
    if not isinstance(value, list):
        return []
    return [
        (p[0], p[1])
        for p in value
        if isinstance(p, list)
        and len(p) == 2
        and all(isinstance(n, int) for n in p)
        and p[0] <= p[1]
        and p[1] - p[0] < 1_000_000
    ]


def unit_view(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the cloud knows of the unit now: the last full status in the unit's order, each
    later delta's sections laid over it (empty when no full status arrived yet)."""
    view: dict[str, Any] = {}
    for o in in_unit_order(records):
        if o.duplicate:
            continue
        status = o.record.get("unitStatus") or {}
        if not status.get("isDeltaInfo"):
            view = dict(status)
        elif view:
            view.update({k: status[k] for k in SECTIONS if k in status})
            view["seq"] = status.get("seq", view.get("seq"))
    return view
