"""The agent's Prometheus metrics, in a registry of its own (never the global one, which
would mix agents, and tests, in one process).

Two kinds: counters and histograms fed by events as they happen (a cycle that ends, a phase
left), and gauges read from the components at scrape time (`Gauges`, gathered by the routes),
so a gauge never lags what `/link` or `/items` say.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from statemachine import UPDATE_CYCLE

from ..cm.communication.health import Health
from ..cm.updatemanager.handler import failure_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

PHASE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)
"""Seconds: a phase takes from milliseconds (pending) to an hour (a big download)."""

OUTCOMES = ("succeeded", "failed", "crashed", "superseded")


def cycle_outcome(
    source: str, event: str, target: str, payload: Mapping[str, Any] | None
) -> str | None:
    """How a move ends a cycle, if it does: `superseded` (new input restarted it), `crashed`
    (an unexpected error, to the sticky failed phase), `failed` (back at rest with a failure
    recorded: a phase failed, or some items or instances did), `succeeded`; None for a move
    within a cycle or one that starts it."""
    if event == "supersede":
        return "superseded"
    if source not in UPDATE_CYCLE.resting and target == "failed":
        return "crashed"
    if source not in UPDATE_CYCLE.resting and target in UPDATE_CYCLE.resting:
        return "succeeded" if failure_of(target, payload) is None else "failed"
    return None


@dataclass(frozen=True)
class Gauges:
    """What the gauges show, read from the components when scraped."""

    phase: str
    downloaded_bytes: int
    downloads_active: int
    outbox_depth: int
    outbox_bytes: int
    outbox_oldest_age_s: float | None
    link_health: str
    link_connected: bool
    items: Mapping[str, int] = field(default_factory=dict)
    """Item versions by state."""
    nodes: Mapping[str, int] = field(default_factory=dict)
    """Nodes by state."""
    instances: Mapping[str, int] = field(default_factory=dict)
    """Instances by state."""


def gauge_families(g: Gauges) -> list[Metric]:
    """The scrape-time metric families for `g` (pure: tested without a registry)."""
    phase = GaugeMetricFamily(
        "aoscore_cycle_phase", "1 for the update cycle's current phase.", labels=["phase"]
    )
    for name in UPDATE_CYCLE.phases:
        phase.add_metric([name], 1.0 if name == g.phase else 0.0)
    downloaded = CounterMetricFamily(
        "aoscore_downloaded_bytes", "Blob bytes received since the agent started."
    )
    downloaded.add_metric([], float(g.downloaded_bytes))
    active = GaugeMetricFamily("aoscore_downloads_active", "Blobs downloading now.")
    active.add_metric([], float(g.downloads_active))
    depth = GaugeMetricFamily("aoscore_outbox_depth", "Messages waiting for the cloud's ack.")
    depth.add_metric([], float(g.outbox_depth))
    size = GaugeMetricFamily("aoscore_outbox_bytes", "Bytes of messages waiting in the outbox.")
    size.add_metric([], float(g.outbox_bytes))
    age = GaugeMetricFamily(
        "aoscore_outbox_oldest_age_seconds", "Age of the oldest waiting message (0: none)."
    )
    age.add_metric([], g.outbox_oldest_age_s or 0.0)
    health = GaugeMetricFamily(
        "aoscore_link_health", "1 for the cloud link's current health.", labels=["health"]
    )
    for h in Health:
        health.add_metric([h.value], 1.0 if h.value == g.link_health else 0.0)
    connected = GaugeMetricFamily("aoscore_link_connected", "1 while the cloud link is up.")
    connected.add_metric([], 1.0 if g.link_connected else 0.0)
    families: list[Metric] = [phase, downloaded, active, depth, size, age, health, connected]
    for name, doc, counts in (
        ("aoscore_items", "Item versions by state.", g.items),
        ("aoscore_nodes", "Nodes by state.", g.nodes),
        ("aoscore_instances", "Instances by state.", g.instances),
    ):
        family = GaugeMetricFamily(name, doc, labels=["state"])
        for state, count in sorted(counts.items()):
            family.add_metric([state], float(count))
        families.append(family)
    return families


class _GaugeCollector(Collector):
    def __init__(self, read: Callable[[], Gauges]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from gauge_families(self._read())


class AgentMetrics:
    """One agent's metrics.

    Args:
        read: gathers the gauges' values at scrape time.
        clock: monotonic seconds (for phase durations).
    """

    def __init__(self, read: Callable[[], Gauges], clock: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._clock = clock
        self.cycles = Counter(
            "aoscore_cycles",
            "Update cycles ended, by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        for outcome in OUTCOMES:
            self.cycles.labels(outcome)  # every outcome shows, 0 until it happens
        self.phase_seconds = Histogram(
            "aoscore_phase_duration_seconds",
            "Seconds spent in each working phase of the update cycle (from entering it to "
            "leaving it, in this process).",
            ["phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_GaugeCollector(read))
        self._entered: tuple[str, float] | None = None

    def resumed(self, phase: str) -> None:
        """The agent starts in `phase`: time it from now (what ran before the restart is the
        last process's, and its metrics went with it)."""
        self._entered = None if phase in UPDATE_CYCLE.resting else (phase, self._clock())

    def moved(
        self, source: str, event: str, target: str, payload: Mapping[str, Any] | None
    ) -> None:
        """The cycle moved: time the phase it left, count the cycle if it ended."""
        now = self._clock()
        if self._entered is not None and self._entered[0] == source:
            self.phase_seconds.labels(source).observe(max(0.0, now - self._entered[1]))
        self._entered = None if target in UPDATE_CYCLE.resting else (target, now)
        outcome = cycle_outcome(source, event, target, payload)
        if outcome is not None:
            self.cycles.labels(outcome).inc()

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)
