"""The cloud link's reconnect schedule and health, on a fake clock: the fleet's numbers (15 s
doubling with +-30 % jitter to 15 min, the circuit open 5 min after 10 failures in a row), and a
connection that drops before it was healthy a minute counting as a failure."""

from __future__ import annotations

import random

import pytest

from aoscore_py.cm.communication.health import Health, HealthChange, LinkHealth, ReconnectPolicy


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def health(policy: ReconnectPolicy | None = None, seed: int = 7) -> tuple[LinkHealth, Clock]:
    clock = Clock()
    return LinkHealth(policy or ReconnectPolicy(), clock, random.Random(seed)), clock


def test_refusals_back_off_from_15_s_doubling_within_30_percent() -> None:
    link, _ = health()
    delays = [link.disconnected("refused") for _ in range(6)]
    for n, delay in enumerate(delays):
        base = 15.0 * 2**n
        assert base * 0.7 <= delay <= base * 1.3, (n, delay)


def test_the_delay_is_capped_at_15_minutes() -> None:
    link, _ = health(ReconnectPolicy(breaker_failures=1000))
    delays = [link.disconnected("refused") for _ in range(20)]
    assert max(delays) <= 900.0
    assert delays[-1] >= 900.0 * 0.7


def test_after_10_failures_in_a_row_the_circuit_opens_for_5_minutes() -> None:
    link, _ = health()
    delays = [link.disconnected("refused") for _ in range(10)]
    assert delays[-1] == 300.0
    assert link.health == Health.OFFLINE
    assert "circuit open" in link.changes[-1].reason
    assert 15.0 * 0.7 <= link.disconnected("refused") <= 15.0 * 1.3, "then starts over"


def test_a_connection_dropped_at_once_still_counts_as_a_failure() -> None:
    """A cloud that accepts and drops every connection is backed off like one that refuses."""
    link, clock = health()
    delays = []
    for _ in range(5):
        link.connected()
        clock.now += 1.0
        delays.append(link.disconnected("oversized frame"))
        clock.now += delays[-1]
    assert delays[-1] >= 15.0 * 2**4 * 0.7


def test_a_connection_healthy_for_a_minute_resets_the_schedule() -> None:
    link, clock = health()
    for _ in range(4):
        link.disconnected("refused")
    link.connected()
    clock.now += 61.0
    assert 15.0 * 0.7 <= link.disconnected("dropped") <= 15.0 * 1.3


@pytest.mark.parametrize(("failures", "state"), [(1, Health.DEGRADED), (3, Health.OFFLINE)])
def test_health_follows_the_failures(failures: int, state: Health) -> None:
    link, _ = health()
    link.connected()
    assert link.health == Health.ONLINE
    for _ in range(failures):
        link.disconnected("refused")
    assert link.health == state


def test_every_change_is_kept_with_its_reason() -> None:
    link, clock = health()
    link.connected()
    clock.now = 5.0
    link.disconnected("ConnectionResetError: reset")
    assert [(c.at, c.health.value, c.reason) for c in link.changes] == [
        (0.0, "online", "connected"),
        (5.0, "degraded", "ConnectionResetError: reset"),
    ]


def test_changes_go_to_on_change_and_a_restart_starts_from_the_kept_ones() -> None:
    kept: list[HealthChange] = []
    link, clock = health()
    link.on_change = kept.append
    link.wall = lambda: 1_000.0 + clock.now
    link.connected()
    clock.now = 5.0
    link.disconnected("reset")
    assert [(c.health.value, c.reason, c.wall_at) for c in kept] == [
        ("online", "connected", 1_000.0),
        ("degraded", "reset", 1_005.0),
    ]
    again, _ = health()
    again.restore(kept)
    again.connected()
    assert [c.reason for c in again.changes] == ["connected", "reset", "connected"]
