"""The cloud link's health and reconnect schedule, as plain code on a clock.

A fleet on cellular links must not hammer its cloud: reconnects back off from 15 s, doubling
with +-30 % jitter, capped at 15 min; after 10 failures in a row the circuit opens for 5 min
(the Iotistica agent's numbers). A failure is a connection that did not come up, or one that
went down before it stayed healthy for a while (a minute): a cloud that accepts and then drops
every connection (an oversized frame after each connect, say) is backed off like one that
refuses, instead of being redialled at once and sent a full status every time.

Health is `online` (connected), `degraded` (a few failures in a row) or `offline` (connected
never, not for long, or the circuit is open); every change is logged and the last ones kept,
in memory and (through `on_change`) in the agent's store, so they outlive a restart.
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ...logs import get_logger

log = get_logger("communication.health")

MAX_CHANGES = 64
"""Health changes kept in memory for the operator (the newest)."""


class Health(enum.StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"
    OFFLINE = "offline"


@dataclass(frozen=True)
class ReconnectPolicy:
    """When to dial the cloud again (seconds)."""

    initial_s: float = 15.0
    factor: float = 2.0
    jitter: float = 0.3
    cap_s: float = 900.0
    breaker_failures: int = 10
    breaker_open_s: float = 300.0
    healthy_after_s: float = 60.0
    degraded_after: int = 3
    """Failures in a row after which the link counts as degraded rather than online."""


@dataclass(frozen=True)
class HealthChange:
    """One change: `at` on the link's clock (monotonic), `wall_at` in wall-clock seconds."""

    at: float
    health: Health
    reason: str
    wall_at: float = 0.0


@dataclass
class LinkHealth:
    """Counts failures, says how long to wait, and tracks the link's health."""

    policy: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    clock: Callable[[], float] = field(default=lambda: 0.0)
    rng: random.Random = field(default_factory=random.Random)
    failures: int = 0
    health: Health = Health.OFFLINE
    changes: deque[HealthChange] = field(default_factory=lambda: deque(maxlen=MAX_CHANGES))
    wall: Callable[[], float] = field(default=time.time)
    on_change: Callable[[HealthChange], None] | None = None
    """Called with every change kept (the agent stores them, so they outlive a restart)."""
    _up_since: float | None = None

    def restore(self, history: list[HealthChange]) -> None:
        """Start from the changes a previous run kept (oldest first)."""
        self.changes.extend(history[-MAX_CHANGES:])

    def connected(self) -> None:
        """The link came up (the failure count stays until it has been healthy a while)."""
        self._up_since = self.clock()
        self._set(Health.ONLINE, "connected")

    def disconnected(self, reason: str, *, slow: bool = False) -> float:
        """The link went down, or did not come up: the seconds to wait before dialling again.

        A connection that stayed up `healthy_after_s` resets the count, and the next dial is
        at `initial_s`; any shorter one counts as a failure. `slow` (a certificate the unit
        does not trust, which no quick retry mends) waits at least the circuit's open period.
        """
        up = self._up_since
        self._up_since = None
        if up is not None and self.clock() - up >= self.policy.healthy_after_s:
            self.failures = 0
        self.failures += 1
        policy = self.policy
        if self.failures >= policy.breaker_failures:
            delay = policy.breaker_open_s
            self.failures = 0  # after the open period, the schedule starts again
            self._set(Health.OFFLINE, f"circuit open for {delay:g} s: {reason}")
            return delay
        base = min(policy.cap_s, policy.initial_s * policy.factor ** (self.failures - 1))
        spread = base * policy.jitter
        delay = max(0.0, min(policy.cap_s, base + self.rng.uniform(-spread, spread)))
        if slow:
            delay = max(delay, policy.breaker_open_s)
            self._set(Health.OFFLINE, reason)
            return delay
        state = Health.DEGRADED if self.failures < policy.degraded_after else Health.OFFLINE
        self._set(state, reason)
        return delay

    def _set(self, health: Health, reason: str) -> None:
        if health == self.health and health != Health.OFFLINE:
            return
        changed = health != self.health
        self.health = health
        change = HealthChange(self.clock(), health, reason, self.wall())
        self.changes.append(change)
        if self.on_change is not None:
            self.on_change(change)
        if changed:
            log.info("link.health", health=health.value, reason=reason, failures=self.failures)
