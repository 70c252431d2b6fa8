"""The admin API's JSON bodies, built from the components' state by pure functions.

Nothing here does I/O or reads a clock: the routes gather plain values (records, the journal,
counters) and `now`, and these functions shape them, so every body is tested without a socket.
Keys are camelCase like the cloud protocol's; times are seconds since the epoch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from statemachine import JournalRecord

from ..blobs.download import Transfer
from ..cm.communication.health import HealthChange
from ..cm.imagemanager.interfaces import ItemRecord
from ..cm.launcher.interfaces import InstanceRecord
from ..errors import Retry
from ..protocol import ErrorInfo

JOURNAL_DEFAULT = 20
"""Journal rows `/cycle` returns unless asked for another number."""
JOURNAL_MAX = 1000
HEALTH_CHANGES = 10
"""Link health changes `/link` returns (the newest)."""


@dataclass(frozen=True)
class NodeFacts:
    """What the node manager knows of one node, as plain values."""

    node_id: str
    state: str
    connected: bool
    gone_for_s: float
    ever_connected: bool
    expected: bool
    alerts: tuple[tuple[str, str], ...] = ()
    """(kind, message) of its last alerts, oldest first."""


def error_json(error: ErrorInfo | None) -> dict[str, Any] | None:
    if error is None:
        return None
    return {"aosCode": error.aos_code, "exitCode": error.exit_code, "message": error.message}


def journal_json(record: JournalRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "from": record.from_phase,
        "event": record.event,
        "to": record.to_phase,
        "note": record.note,
        "at": record.at,
    }


def cycle_view(
    *,
    phase: str,
    payload: Mapping[str, Any] | None,
    revision: int,
    running: bool,
    failure: Retry | None,
    journal: Sequence[JournalRecord],
) -> dict[str, Any]:
    """The update cycle: its phase, what its payload says of the desired status it applies
    and how it failed, and its last journal rows (oldest first)."""
    payload = payload or {}
    return {
        "phase": phase,
        "running": running,
        "revision": revision,
        "desiredStatus": payload.get("ds"),
        "error": payload.get("error"),
        "failedItems": list(payload.get("failed_items") or ()),
        "failure": failure.value if failure else None,
        "journal": [journal_json(r) for r in journal],
    }


def transfer_json(t: Transfer, now: float) -> dict[str, Any]:
    """One blob downloading now: bytes present of its size, rate and the time left at it
    (`now` on the monotonic clock its start was taken on)."""
    rate = t.rate_at(now)
    left = max(0, t.size - t.present)
    return {
        "digest": t.digest,
        "size": t.size,
        "present": t.present,
        "percent": round(100 * t.present / t.size, 1) if t.size else None,
        "resumedFrom": t.resumed_from,
        "bytesPerSecond": round(rate),
        "etaSeconds": round(left / rate, 1) if rate > 0 and t.size else None,
    }


def items_view(
    records: Iterable[ItemRecord], transfers: Iterable[Transfer], now: float
) -> dict[str, Any]:
    """Every item version the unit knows, and the blobs downloading now with their totals
    (`now`: monotonic seconds, the transfers' clock)."""
    downloads = [transfer_json(t, now) for t in transfers]
    size = sum(d["size"] for d in downloads)
    present = sum(d["present"] for d in downloads)
    rate = sum(d["bytesPerSecond"] for d in downloads)
    return {
        "items": [
            {
                "id": r.item_id,
                "version": r.version,
                "type": r.item_type,
                "indexDigest": r.index_digest,
                "state": r.state.value,
                "error": error_json(r.error),
            }
            for r in sorted(records, key=lambda r: (r.item_id, r.version))
        ],
        "downloads": downloads,
        "download": {
            "blobs": len(downloads),
            "size": size,
            "present": present,
            "percent": round(100 * present / size, 1) if size else None,
            "bytesPerSecond": rate,
            "etaSeconds": round((size - present) / rate, 1) if rate else None,
        },
    }


def instance_json(r: InstanceRecord) -> dict[str, Any]:
    return {
        "item": r.key.item_id,
        "subject": r.key.subject_id,
        "instance": r.key.instance,
        "version": r.version,
        "state": r.state.value,
        "priority": r.priority,
        "error": error_json(r.error),
    }


def _instance_order(r: InstanceRecord) -> tuple[str, str, int]:
    return (r.key.item_id, r.key.subject_id, r.key.instance)


def nodes_view(nodes: Iterable[NodeFacts], instances: Iterable[InstanceRecord]) -> dict[str, Any]:
    """Every node with its health and the instances placed on it; instances on no node the
    manager knows (placed, then the node left the unit) are listed under `unplaced`."""
    by_node: dict[str, list[InstanceRecord]] = defaultdict(list)
    for r in instances:
        by_node[r.node].append(r)
    out = []
    for n in sorted(nodes, key=lambda n: n.node_id):
        placed = sorted(by_node.pop(n.node_id, []), key=_instance_order)
        out.append(
            {
                "id": n.node_id,
                "state": n.state,
                "connected": n.connected,
                "goneForSeconds": round(n.gone_for_s, 1),
                "everConnected": n.ever_connected,
                "expected": n.expected,
                "alerts": [{"kind": k, "message": m} for k, m in n.alerts],
                "instances": [instance_json(r) for r in placed],
            }
        )
    rest = sorted((r for rs in by_node.values() for r in rs), key=_instance_order)
    return {
        "nodes": out,
        "unplaced": [{**instance_json(r), "node": r.node} for r in rest],
    }


def link_view(
    *,
    health: str,
    failures: int,
    changes: Sequence[HealthChange],
    connected: bool,
    url: str | None,
    transport: str | None,
    publish_mode: str,
    outbox_depth: int,
    outbox_bytes: int,
    outbox_oldest_at: float | None,
    now: float,
) -> dict[str, Any]:
    """The cloud link's health, how the unit publishes, and what waits in the outbox."""
    return {
        "health": health,
        "connected": connected,
        "failures": failures,
        "url": url,
        "transport": transport,
        "publishMode": publish_mode,
        "outbox": {
            "depth": outbox_depth,
            "bytes": outbox_bytes,
            "oldestAt": outbox_oldest_at,
            "oldestAgeSeconds": (
                None if outbox_oldest_at is None else round(max(0.0, now - outbox_oldest_at), 1)
            ),
        },
        "healthChanges": [
            {"health": c.health.value, "reason": c.reason, "at": c.wall_at}
            for c in list(changes)[-HEALTH_CHANGES:]
        ],
    }


def journal_limit(raw: str | None) -> int:
    """The `journal` query parameter of `/cycle`: rows wanted, 0..JOURNAL_MAX.

    Raises:
        ValueError: not a whole number in range (the message says what is allowed).
    """
    if raw is None or raw == "":
        return JOURNAL_DEFAULT
    if not raw.isdigit() or int(raw) > JOURNAL_MAX:
        raise ValueError(f"journal={raw!r}: give a whole number from 0 to {JOURNAL_MAX}")
    return int(raw)
