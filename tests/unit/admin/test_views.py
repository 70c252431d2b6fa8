"""The admin API's bodies, from plain values: no socket, no store, no clock."""

from __future__ import annotations

import pytest

from aoscore_py.admin import views
from aoscore_py.blobs.download import Transfer
from aoscore_py.cm.communication.health import Health, HealthChange
from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.errors import Retry
from aoscore_py.nodes import InstanceKey
from aoscore_py.protocol import ErrorInfo, InstanceState, ItemState
from statemachine import JournalRecord


def journal_row(seq: int, source: str, event: str, target: str) -> JournalRecord:
    return JournalRecord(seq, "cycle", source, event, target, None, f"note {seq}", 100.0 + seq)


def instance(item: str, n: int, node: str, state: InstanceState) -> InstanceRecord:
    return InstanceRecord(InstanceKey(item, "subj", n), "service", "1.0.0", node, 10, state)


class TestCycle:
    def test_a_failed_cycle_says_what_failed_and_how(self) -> None:
        body = views.cycle_view(
            phase="none",
            payload={"ds": "sha256:ab", "error": "bad digest", "failed_items": ["web"]},
            revision=7,
            running=False,
            failure=Retry.PERMANENT,
            journal=[journal_row(1, "none", "start", "downloading")],
        )
        assert body == {
            "phase": "none",
            "running": False,
            "revision": 7,
            "desiredStatus": "sha256:ab",
            "error": "bad digest",
            "failedItems": ["web"],
            "failure": "permanent",
            "journal": [
                {
                    "seq": 1,
                    "from": "none",
                    "event": "start",
                    "to": "downloading",
                    "note": "note 1",
                    "at": 101.0,
                }
            ],
        }

    def test_a_new_unit_has_an_empty_cycle(self) -> None:
        body = views.cycle_view(
            phase="none", payload=None, revision=0, running=False, failure=None, journal=[]
        )
        assert body["desiredStatus"] is None and body["failedItems"] == []
        assert body["failure"] is None and body["journal"] == []

    @pytest.mark.parametrize(("raw", "rows"), [(None, 20), ("", 20), ("0", 0), ("1000", 1000)])
    def test_journal_limit(self, raw: str | None, rows: int) -> None:
        assert views.journal_limit(raw) == rows

    @pytest.mark.parametrize("raw", ["-1", "1001", "ten", "1.5"])
    def test_a_bad_journal_limit_says_what_is_allowed(self, raw: str) -> None:
        with pytest.raises(ValueError, match="whole number from 0 to 1000"):
            views.journal_limit(raw)


class TestItems:
    def test_items_sorted_with_errors_and_transfers_with_rate_and_eta(self) -> None:
        records = [
            ItemRecord("web", "2.0.0", "service", "sha256:2", ItemState.PENDING),
            ItemRecord(
                "db",
                "1.0.0",
                "service",
                "sha256:1",
                ItemState.FAILED,
                ErrorInfo(aos_code=10, message="digest mismatch"),
            ),
        ]
        transfer = Transfer("sha256:aa", size=1000, present=400, resumed_from=100, fetched=300)
        transfer.started = 10.0
        body = views.items_view(records, [transfer], now=13.0)  # 300 bytes in 3 s
        assert [(i["id"], i["state"]) for i in body["items"]] == [
            ("db", "failed"),
            ("web", "pending"),
        ]
        assert body["items"][0]["error"] == {
            "aosCode": 10,
            "exitCode": 0,
            "message": "digest mismatch",
        }
        assert body["downloads"] == [
            {
                "digest": "sha256:aa",
                "size": 1000,
                "present": 400,
                "percent": 40.0,
                "resumedFrom": 100,
                "bytesPerSecond": 100,
                "etaSeconds": 6.0,
            }
        ]
        assert body["download"] == {
            "blobs": 1,
            "size": 1000,
            "present": 400,
            "percent": 40.0,
            "bytesPerSecond": 100,
            "etaSeconds": 6.0,
        }

    def test_a_transfer_that_has_not_moved_has_no_eta(self) -> None:
        transfer = Transfer("sha256:aa", size=0)
        transfer.started = 10.0
        body = views.items_view([], [transfer], now=10.0)
        assert body["downloads"][0]["etaSeconds"] is None
        assert body["downloads"][0]["percent"] is None
        assert body["download"]["etaSeconds"] is None


class TestNodes:
    def test_instances_under_their_node_and_strays_apart(self) -> None:
        nodes = [
            views.NodeFacts("node-2", "error", False, 75.04, True, True, (("system", "disk"),)),
            views.NodeFacts("node-1", "provisioned", True, 0.0, True, True),
        ]
        records = [
            instance("web", 1, "node-1", InstanceState.ACTIVE),
            instance("web", 0, "node-1", InstanceState.ACTIVE),
            instance("db", 0, "node-2", InstanceState.FAILED),
            instance("old", 0, "node-9", InstanceState.INACTIVE),
        ]
        body = views.nodes_view(nodes, records)
        assert [n["id"] for n in body["nodes"]] == ["node-1", "node-2"]
        node1, node2 = body["nodes"]
        assert [(i["item"], i["instance"]) for i in node1["instances"]] == [("web", 0), ("web", 1)]
        assert node2["state"] == "error" and node2["goneForSeconds"] == 75.0
        assert node2["alerts"] == [{"kind": "system", "message": "disk"}]
        assert [i["state"] for i in node2["instances"]] == ["failed"]
        assert [(i["item"], i["node"]) for i in body["unplaced"]] == [("old", "node-9")]


class TestLink:
    def test_health_outbox_and_the_newest_changes(self) -> None:
        changes = [HealthChange(float(i), Health.OFFLINE, f"r{i}", 1000.0 + i) for i in range(15)]
        body = views.link_view(
            health="degraded",
            failures=2,
            changes=changes,
            connected=False,
            url="wss://cloud/ws",
            transport=None,
            publish_mode="buffer-only",
            outbox_depth=3,
            outbox_bytes=900,
            outbox_oldest_at=1000.0,
            now=1042.25,
        )
        assert body["health"] == "degraded" and body["publishMode"] == "buffer-only"
        assert body["outbox"] == {
            "depth": 3,
            "bytes": 900,
            "oldestAt": 1000.0,
            "oldestAgeSeconds": 42.2,
        }
        assert len(body["healthChanges"]) == views.HEALTH_CHANGES
        assert body["healthChanges"][-1] == {"health": "offline", "reason": "r14", "at": 1014.0}

    def test_an_empty_outbox_has_no_age(self) -> None:
        body = views.link_view(
            health="online",
            failures=0,
            changes=[],
            connected=True,
            url=None,
            transport="ws",
            publish_mode="direct",
            outbox_depth=0,
            outbox_bytes=0,
            outbox_oldest_at=None,
            now=5.0,
        )
        assert body["outbox"]["oldestAgeSeconds"] is None
