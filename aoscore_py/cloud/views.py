"""What an operator reads first about a unit: its health and the counts of its last known state.

Pure functions over `ordering.unit_view` (the last full status with later deltas laid over it),
so the operator API and its tests agree on the words without a cloud running.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

OFFLINE = "offline"  # no WebSocket to the cloud now, nor a recent poll
UNKNOWN = "unknown"  # connected, but no full status arrived yet
DEGRADED = "degraded"  # an item, instance, node or the unit config reports a failure
OK = "ok"

# A unit that polls holds no connection: it counts as online this long after its last poll,
# or three of its poll intervals when they are longer (one late poll is not an outage).
POLL_ONLINE_S = 300.0
POLL_ONLINE_INTERVALS = 3

_FAILED_NODE_STATES = frozenset({"error"})
_FAILED_STATES = frozenset({"failed"})


def view_counts(view: dict[str, Any]) -> dict[str, Any]:
    """How many items, instances and nodes are in each state, the unit config's version and
    state, and the seq of the last status the view holds."""
    instances: Counter[str] = Counter()
    for group in _list(view.get("instances")):
        for inst in _list(group.get("instances")):
            instances[str(inst.get("state"))] += 1
    configs = _list(view.get("unitConfig"))
    return {
        "seq": view.get("seq"),
        "items": dict(Counter(str(i.get("state")) for i in _list(view.get("items")))),
        "instances": dict(instances),
        "nodes": dict(Counter(str(n.get("state")) for n in _list(view.get("nodes")))),
        "unitConfig": (
            {"version": configs[-1].get("version"), "state": configs[-1].get("state")}
            if configs
            else None
        ),
    }


def polled_recently(now: float, last_poll: float | None, interval_s: float | None) -> bool:
    """Whether a unit last seen by poll at `last_poll` (its polls `interval_s` apart, when
    known) still counts as online at `now`."""
    if last_poll is None:
        return False
    window = max(POLL_ONLINE_S, POLL_ONLINE_INTERVALS * (interval_s or 0.0))
    return now - last_poll <= window


def unit_health(connected: bool, view: dict[str, Any]) -> str:
    """`offline`, `unknown`, `degraded` or `ok`: what the unit's link and last view say."""
    if not connected:
        return OFFLINE
    if not view:
        return UNKNOWN
    counts = view_counts(view)
    failed = any(s in _FAILED_STATES for s in (*counts["items"], *counts["instances"]))
    failed |= any(s in _FAILED_NODE_STATES for s in counts["nodes"])
    failed |= (counts["unitConfig"] or {}).get("state") in _FAILED_STATES
    return DEGRADED if failed else OK


def _list(value: object) -> list[dict[str, Any]]:
    """The objects of a JSON list (anything else is no list: a view is what units sent)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
