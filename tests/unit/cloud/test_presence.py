"""How the cloud tells operators a unit is online: a WebSocket held now, or a poll recent
enough (5 minutes, or 3 of the unit's own poll intervals when longer), kept in memory; the
ports units know, kept across restarts; and the `cloud units` line, `-` for what is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

from aoscore_py.cli.cloud import unit_line
from aoscore_py.cloud.https import PortChoice, choose_port
from aoscore_py.cloud.server import CloudServer
from aoscore_py.cloud.state import CloudState
from aoscore_py.cloud.views import POLL_ONLINE_S, polled_recently


class TestPolledRecently:
    def test_never_polled_is_not_online(self) -> None:
        assert not polled_recently(1000.0, None, None)

    @pytest.mark.parametrize(
        ("ago", "interval", "online"),
        [
            (0.0, None, True),
            (POLL_ONLINE_S, None, True),
            (POLL_ONLINE_S + 1, None, False),
            (POLL_ONLINE_S + 1, 60.0, False),  # 3 x 60 s is shorter than 5 minutes
            (1700.0, 600.0, True),  # within 3 intervals of 10 minutes
            (1801.0, 600.0, False),
        ],
    )
    def test_within_five_minutes_or_three_intervals(
        self, ago: float, interval: float | None, online: bool
    ) -> None:
        assert polled_recently(10_000.0, 10_000.0 - ago, interval) is online


class TestServerPresence:
    def test_a_poll_makes_the_unit_seen_online_by_poll_without_a_commit(
        self, tmp_path: Path
    ) -> None:
        state = CloudState(tmp_path)
        server = CloudServer(state, "http://127.0.0.1:1")
        assert server.presence("unit-a").connected is False
        assert server.presence("unit-a").transport is None
        server.seen_by_poll("unit-a", desired=True)
        presence = server.presence("unit-a")
        assert presence.connected and presence.transport == "poll"
        assert presence.polled_at is not None
        assert state.fleet() == []  # in memory only
        later = presence.polled_at + POLL_ONLINE_S + 1
        gone = server.presence("unit-a", later)
        assert not gone.connected and gone.transport == "poll"

    def test_the_interval_between_desired_fetches_widens_the_window(self, tmp_path: Path) -> None:
        server = CloudServer(CloudState(tmp_path), "http://127.0.0.1:1")
        server.seen_by_poll("unit-b", desired=True)
        seen = server._poll_seen["unit-b"]
        seen.last_desired = seen.last - 600.0  # as if its previous poll was 10 minutes before
        server.seen_by_poll("unit-b", desired=True)
        assert seen.interval_s is not None and seen.interval_s >= 600.0
        server.seen_by_poll("unit-b", desired=False)  # a POST does not count as an interval
        assert seen.interval_s >= 600.0
        assert server.presence("unit-b", seen.last + 1500.0).connected


class TestPorts:
    def test_a_given_port_wins_over_a_kept_one(self) -> None:
        assert choose_port("https", 8443, {"https": 40000}) == PortChoice("https", 8443)

    def test_left_at_0_the_kept_port_is_used(self) -> None:
        assert choose_port("wss", 0, {"wss": 40001}) == PortChoice("wss", 40001, kept=True)

    def test_nothing_kept_picks_a_free_one(self) -> None:
        assert choose_port("https", 0, {}) == PortChoice("https", 0)

    def test_a_kept_port_taken_says_which_and_how_to_choose_another(self) -> None:
        message = PortChoice("https", 40000, kept=True).refusal("127.0.0.1", "in use")
        assert "https port 40000" in message and "--https-port" in message
        assert "kept" in message

    def test_ports_are_kept_in_the_cloud_db(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        assert state.kept_ports() == {}
        state.keep_ports({"https": 40000, "wss": 40001})
        state.close()
        assert CloudState(tmp_path).kept_ports() == {"https": 40000, "wss": 40001}

    def test_a_damaged_kept_value_is_ignored(self, tmp_path: Path) -> None:
        state = CloudState(tmp_path)
        state.keep_ports({"https": 40000})
        with state._conn() as conn:
            conn.execute('UPDATE meta SET value = \'{"https": 70000, "wss": "x"}\'')
        assert state.kept_ports() == {}


class TestUnitLine:
    def test_absent_values_print_a_dash(self) -> None:
        line = unit_line({"id": "unit-a", "connected": False, "health": "offline"})
        assert line == (
            "unit-a offline health=offline lastSeq=- statuses=- desiredSeq=- transport=- "
            "lastSeen=- items=-"
        )
        assert "None" not in line

    def test_a_polling_unit_with_its_last_seen_in_utc(self) -> None:
        line = unit_line(
            {
                "id": "unit-b",
                "connected": True,
                "transport": "poll",
                "health": "ok",
                "lastSeq": 4,
                "statuses": 4,
                "desiredSeq": 2,
                "lastSeen": 0.0,
                "view": {"items": {"installed": 2}},
            }
        )
        assert line == (
            "unit-b online health=ok lastSeq=4 statuses=4 desiredSeq=2 transport=poll "
            "lastSeen=1970-01-01T00:00:00Z items=installed:2"
        )
