"""When the node's instance statuses are news for the CM: pure decisions, no I/O.

The SM reads its manager's statuses every second; sending them all each time would flood the
link with countdowns (`; next start in 7 s`) that change every second and say nothing new. A
`NodeInstancesStatus` goes out only when a state, a version, an error or a manifest changed
(`fingerprint`), and an `InstanceAlert` only when an instance starts failing, fails otherwise,
or is held in a new restart backoff (`alert_worthy`). `Reporter` remembers what was last sent
and seen.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..nodes import InstanceKey, InstanceStatus
from .health import CRASH_LOOP, IMAGE_PULL, START_FAILURE

ALERT_REASONS = (START_FAILURE, CRASH_LOOP, IMAGE_PULL)
_COUNTDOWN = re.compile(r"; next start in (\d+) s")


@dataclass(frozen=True)
class Meta:
    """What a report says of an instance beyond its status: its item type and manifest."""

    item_type: str = "service"
    manifest_digest: str = ""


def compose(
    statuses: Sequence[InstanceStatus], failed: Mapping[InstanceKey, InstanceStatus]
) -> list[InstanceStatus]:
    """What the node reports: the manager's statuses, those in `failed` replaced, by key."""
    merged = {s.key: s for s in statuses}
    merged.update(failed)
    return [merged[key] for key in sorted(merged)]


def steady(message: str) -> str:
    """An error message without its countdown (`; next start in 7 s`), which changes every
    second and is no news."""
    return _COUNTDOWN.sub("", message)


def countdown(message: str) -> int | None:
    """The seconds until the next start that an error message names, if any."""
    found = _COUNTDOWN.search(message)
    return int(found.group(1)) if found else None


def fingerprint(
    statuses: Sequence[InstanceStatus], meta: Mapping[InstanceKey, Meta]
) -> tuple[Any, ...]:
    """What must differ for a new `NodeInstancesStatus` to be worth sending."""
    out = []
    for s in sorted(statuses, key=lambda s: s.key):
        error = s.error
        err = (error.aos_code, error.exit_code, steady(error.message)) if error else None
        out.append((s.key, s.version, str(s.state), s.runtime, meta.get(s.key), err))
    return tuple(out)


def alert_worthy(before: InstanceStatus | None, now: InstanceStatus) -> bool:
    """Whether `now` is news for an `InstanceAlert`: the instance started failing (StartFailure,
    CrashLoopBackOff, ErrImagePull), fails otherwise than before, or was held in a new restart
    backoff (a countdown appeared or grew: it only shrinks while one backoff runs)."""
    error = now.error
    if error is None or not error.message.startswith(ALERT_REASONS):
        return False
    old = before.error if before is not None else None
    if old is None or before is None or before.version != now.version:
        return True
    if (old.aos_code, old.exit_code, steady(old.message)) != (
        error.aos_code,
        error.exit_code,
        steady(error.message),
    ):
        return True
    then, left = countdown(old.message), countdown(error.message)
    return left is not None and (then is None or left > then)


@dataclass
class Reporter:
    """What the CM was last told (`sent`), and what was last seen (for alerts)."""

    sent: tuple[Any, ...] | None = None
    seen: dict[InstanceKey, InstanceStatus] = field(default_factory=dict)

    def changed(self, reports: Sequence[InstanceStatus], meta: Mapping[InstanceKey, Meta]) -> bool:
        return fingerprint(reports, meta) != self.sent

    def mark_sent(
        self, reports: Sequence[InstanceStatus], meta: Mapping[InstanceKey, Meta]
    ) -> None:
        self.sent = fingerprint(reports, meta)

    def alerts(self, reports: Sequence[InstanceStatus]) -> list[InstanceStatus]:
        """The statuses worth an alert since the last call; remembers `reports`."""
        out = [s for s in reports if alert_worthy(self.seen.get(s.key), s)]
        self.seen = {s.key: s for s in reports}
        return out
