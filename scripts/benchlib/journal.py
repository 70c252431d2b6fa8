"""Where an agent's time goes, read from what it writes down: its log (JSON lines from the CM,
logfmt lines from a node's SM process, both with a `ts` to the millisecond) and the reference
cloud's timeline of the unit statuses it received (`receivedAt`, seconds since the epoch).

Pure functions: text and records in, times out, so that the benchmark's arithmetic is tested
without an agent. All times are wall-clock seconds since the epoch: the agent, its SM and the
cloud run on one host, so their clocks are one clock.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

Record = dict[str, Any]
# One instance as the cloud sees it: (item id, version, instance index).
Instance = tuple[str, str, int]

_LOGFMT_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')
# The CM's events that split a cycle into what the agent was doing.
_PHASE = "phase.entered"
# The SM's events that end a piece of its work, and how each names that work.
_SM_WORK = {"update.received": "dispatch to the SM", "blobcache.fetched": "SM fetches blobs"}
_STEP_NAMES = {
    "load_image": "load image",
    "create": "create container",
    "start": "start container",
    "retire": "settle, then retire old",
    "remove": "remove container",
    "rollback": "rollback",
}


def log_time(ts: str) -> float:
    """Seconds since the epoch of a log line's `ts` (`2026-12-03T13:46:28.460Z`).

    Raises:
        ValueError: not that shape.
    """
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def parse_line(line: str) -> Record | None:
    """One log line as a record with its time as `t`; None for a line that is neither a JSON
    object nor logfmt with a `ts` (a traceback, a child's stray output)."""
    line = line.strip()
    record: Record
    if line.startswith("{"):
        try:
            loaded = json.loads(line)
        except ValueError:
            return None
        if not isinstance(loaded, dict):
            return None
        record = loaded
    elif line.startswith("ts="):
        record = {}
        for key, raw in _LOGFMT_PAIR.findall(line):
            if raw.startswith('"'):
                with contextlib.suppress(ValueError):
                    raw = json.loads(raw)
            record[key] = raw
    else:
        return None
    try:
        record["t"] = log_time(str(record["ts"]))
    except (KeyError, ValueError):
        return None
    return record


def parse_log(text: str) -> list[Record]:
    """Every record of a log, in the order written (the CM and its SMs interleave)."""
    return [r for r in (parse_line(line) for line in text.splitlines()) if r is not None]


def received_at(records: Iterable[Record], message_type: str = "desiredStatus") -> float | None:
    """When the agent took the first message of `message_type` off its cloud link."""
    for record in records:
        if record.get("event") == "message.received" and record.get("type") == message_type:
            return float(record["t"])
    return None


def reported_instances(unit_status: Mapping[str, Any]) -> dict[Instance, str]:
    """What a unitStatus reports: each instance with its state."""
    out: dict[Instance, str] = {}
    for group in unit_status.get("instances") or ():
        item = str((group.get("item") or {}).get("id"))
        version = str(group.get("version"))
        for instance in group.get("instances") or ():
            out[(item, version, int(instance["instance"]))] = str(instance.get("state"))
    return out


def first_report(timeline: Sequence[Mapping[str, Any]], wanted: set[Instance]) -> Mapping | None:
    """The first timeline record whose full unitStatus reports exactly `wanted`, every instance
    active: the new ones there, and any other (an old version's) gone."""
    for record in timeline:
        status = record.get("unitStatus") or {}
        if status.get("isDeltaInfo"):
            continue
        reported = reported_instances(status)
        if set(reported) == wanted and all(s == "active" for s in reported.values()):
            return record
    return None


def _window(records: Iterable[Record], start: float, end: float) -> list[Record]:
    # The log's stamps are cut to the millisecond: an event of the first millisecond counts.
    return sorted(
        (r for r in records if start - 0.001 <= float(r["t"]) <= end), key=lambda r: r["t"]
    )


def phase_spans(records: Iterable[Record], start: float, end: float) -> dict[str, float]:
    """Split `start`..`end` by the update cycle's phases, in the order first entered.

    `accept` runs from `start` (the desired status received) to the first phase entered; each
    phase runs to the next one entered, or to `end`; after the cycle rests again (`none`), the
    time until `end` is `report`. The spans add up to `end - start`.
    """
    spans: dict[str, float] = {}
    label, since = "accept", start
    for record in _window(records, start, end):
        if record.get("event") != _PHASE:
            continue
        t = max(float(record["t"]), start)
        spans[label] = spans.get(label, 0.0) + (t - since)
        phase = str(record.get("phase"))
        label, since = ("report" if phase == "none" else phase), t
    spans[label] = spans.get(label, 0.0) + (end - since)
    return spans


def sm_spans(records: Iterable[Record], start: float, end: float) -> dict[str, float]:
    """Split the SM's work between `start` (say, launching entered) and `end` by what ended each
    gap: the dispatch to the SM, its blob fetches, and each kind of step it ran (loading an
    image, creating, starting, retiring a replaced container). The SM runs its steps one after
    the other, so the gap before a step's `step.done` is that step's time; the gap before a
    retire is mostly the wait for the new container to settle. Time after the SM's last event
    is left out, so the spans add up to at most `end - start`."""
    spans: dict[str, float] = {}
    since = start
    for record in _window(records, start, end):
        event = record.get("event")
        if event in _SM_WORK:
            label = _SM_WORK[str(event)]
        elif event in ("step.done", "step.failed"):
            action = str(record.get("action"))
            label = _STEP_NAMES.get(action, action)
        else:
            continue
        t = max(float(record["t"]), start)
        spans[label] = spans.get(label, 0.0) + (t - since)
        since = t
    return spans


def first_event(
    records: Iterable[Record], event: str, after: float = 0.0, **fields: Any
) -> Record | None:
    """The first record of `event` at or after `after` whose fields match."""
    for record in sorted(records, key=lambda r: r["t"]):
        if record.get("event") != event or float(record["t"]) < after - 0.001:
            continue
        if all(record.get(k) == v for k, v in fields.items()):
            return record
    return None
