"""The agent's metrics: cycle outcomes, phase durations, scrape-time gauges, own registry."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from aoscore_py.admin.metrics import AgentMetrics, Gauges, cycle_outcome


def gauges(**overrides: object) -> Gauges:
    values: dict[str, object] = {
        "phase": "none",
        "downloaded_bytes": 0,
        "downloads_active": 0,
        "outbox_depth": 0,
        "outbox_bytes": 0,
        "outbox_oldest_age_s": None,
        "link_health": "offline",
        "link_connected": False,
    }
    values.update(overrides)
    return Gauges(**values)  # type: ignore[arg-type]


def samples(metrics: AgentMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("source", "event", "target", "payload", "outcome"),
    [
        ("finalizing", "done", "none", {"ds": "x"}, "succeeded"),
        ("finalizing", "done", "none", {"failed_items": ["web"], "retry": "permanent"}, "failed"),
        ("downloading", "fail", "none", {"error": "no URL", "retry": "transient"}, "failed"),
        ("launching", "crash", "failed", {}, "crashed"),
        ("waitingActive", "supersede", "downloading", {}, "superseded"),
        ("none", "start", "downloading", {}, None),
        ("failed", "start", "downloading", {}, None),
        ("downloading", "done", "pending", {}, None),
    ],
)
def test_cycle_outcome(
    source: str, event: str, target: str, payload: dict[str, object], outcome: str | None
) -> None:
    assert cycle_outcome(source, event, target, payload) == outcome


def test_a_cycle_is_counted_and_its_phases_timed() -> None:
    clock = FakeClock()
    metrics = AgentMetrics(gauges, clock)
    for phase, event, target, at in [
        ("none", "start", "downloading", 0.0),
        ("downloading", "done", "pending", 2.0),
        ("pending", "done", "installing", 2.5),
        ("installing", "done", "launching", 3.0),
        ("launching", "done", "waitingActive", 4.0),
        ("waitingActive", "done", "finalizing", 6.0),
        ("finalizing", "done", "none", 6.25),
    ]:
        clock.now = at
        metrics.moved(phase, event, target, {"ds": "x"})
    got = samples(metrics)
    assert got[("aoscore_cycles_total", (("outcome", "succeeded"),))] == 1.0
    assert got[("aoscore_cycles_total", (("outcome", "failed"),))] == 0.0
    assert got[("aoscore_phase_duration_seconds_sum", (("phase", "downloading"),))] == 2.0
    assert got[("aoscore_phase_duration_seconds_sum", (("phase", "finalizing"),))] == 0.25
    assert got[("aoscore_phase_duration_seconds_count", (("phase", "waitingActive"),))] == 1.0
    assert ("aoscore_phase_duration_seconds_count", (("phase", "none"),)) not in got


def test_a_resumed_phase_is_timed_from_the_restart() -> None:
    clock = FakeClock()
    clock.now = 100.0
    metrics = AgentMetrics(gauges, clock)
    metrics.resumed("launching")
    clock.now = 103.0
    metrics.moved("launching", "done", "waitingActive", {})
    got = samples(metrics)
    assert got[("aoscore_phase_duration_seconds_sum", (("phase", "launching"),))] == 3.0


def test_gauges_are_read_at_scrape_time() -> None:
    current = {"g": gauges()}
    metrics = AgentMetrics(lambda: current["g"], FakeClock())
    assert samples(metrics)[("aoscore_outbox_depth", ())] == 0.0
    current["g"] = gauges(
        phase="downloading",
        downloaded_bytes=4096,
        outbox_depth=5,
        outbox_oldest_age_s=12.5,
        link_health="degraded",
        items={"pending": 2},
        nodes={"provisioned": 1, "error": 1},
    )
    got = samples(metrics)
    assert got[("aoscore_outbox_depth", ())] == 5.0
    assert got[("aoscore_outbox_oldest_age_seconds", ())] == 12.5
    assert got[("aoscore_downloaded_bytes_total", ())] == 4096.0
    assert got[("aoscore_cycle_phase", (("phase", "downloading"),))] == 1.0
    assert got[("aoscore_cycle_phase", (("phase", "none"),))] == 0.0
    assert got[("aoscore_link_health", (("health", "degraded"),))] == 1.0
    assert got[("aoscore_link_health", (("health", "online"),))] == 0.0
    assert got[("aoscore_items", (("state", "pending"),))] == 2.0
    assert got[("aoscore_nodes", (("state", "error"),))] == 1.0


def test_each_agent_has_its_own_registry() -> None:
    a, b = AgentMetrics(gauges, FakeClock()), AgentMetrics(gauges, FakeClock())
    a.moved("finalizing", "done", "none", {})
    assert samples(a)[("aoscore_cycles_total", (("outcome", "succeeded"),))] == 1.0
    assert samples(b)[("aoscore_cycles_total", (("outcome", "succeeded"),))] == 0.0
