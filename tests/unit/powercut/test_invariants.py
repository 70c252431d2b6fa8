"""The model's invariants over records: acked desired statuses in force, unit status seqs that
never go back within a boot, no instance running twice, and no crash counted for a node's
power loss."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from aoscore_py.cloud.oci import OciImage
from aoscore_py.powercut.invariants import (
    ContainerEvent,
    acked_in_force,
    crashes_counted,
    crashes_reported,
    no_instance_ran_twice,
    read_sm_state,
    seqs_never_go_back,
)
from aoscore_py.powercut.scenarios import ALPHA, BETA, desired
from aoscore_py.protocol import Certificate, CertificateChain, DesiredStatus, dump_message
from aoscore_py.sm.types import (
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_NODE,
    LABEL_SUBJECT,
    LABEL_VERSION,
)


def _image(name: str) -> OciImage:
    digest = "sha256:" + name.encode().hex().ljust(64, "0")[:64]
    return OciImage(name=name, index_digest=digest, blobs={})


IMAGES = {ALPHA: _image("a"), BETA: _image("b")}
INSTALL = desired(IMAGES)
UPGRADE = desired({**IMAGES, ALPHA: _image("a2")}, version="2.0.0")


def _body(ds: DesiredStatus, seq: int) -> bytes:
    return dump_message(replace(ds, seq=seq))


def _ack(seq: int, ok: bool = True) -> dict[str, Any]:
    return {"seq": seq, "txn": f"t{seq}", "ok": ok}


class TestAckedInForce:
    def test_the_acked_status_held_holds(self) -> None:
        sent = [(1, _body(INSTALL, 1))]
        assert acked_in_force(sent, [_ack(1)], _body(INSTALL, 1)) == []

    def test_an_older_acked_status_superseded_by_a_newer_one_holds(self) -> None:
        sent = [(1, _body(INSTALL, 1)), (2, _body(UPGRADE, 2))]
        assert acked_in_force(sent, [_ack(1), _ack(2)], _body(UPGRADE, 2)) == []
        assert acked_in_force(sent, [_ack(1)], _body(UPGRADE, 2)) == []

    def test_an_acked_status_lost_by_the_cm_is_found(self) -> None:
        sent = [(1, _body(INSTALL, 1)), (2, _body(UPGRADE, 2))]
        problems = acked_in_force(sent, [_ack(1), _ack(2)], _body(INSTALL, 1))
        assert problems == ["the unit acked desired status #2 but holds #1, an older, other one"]

    def test_an_acked_status_with_no_change_from_the_one_held_holds(self) -> None:
        sent = [(1, _body(INSTALL, 1)), (2, _body(INSTALL, 2))]
        assert acked_in_force(sent, [_ack(1), _ack(2)], _body(INSTALL, 1)) == []

    def test_the_certificates_the_cloud_adds_to_what_it_sends_are_no_change(self) -> None:
        sent = [(1, _body(INSTALL, 1)), (2, _body(INSTALL, 2))]
        trusted = replace(
            INSTALL,
            seq=1,
            certificates=(Certificate(b"der", "AB01"),),
            certificate_chains=(CertificateChain("chain", ("AB01",)),),
        )
        assert acked_in_force(sent, [_ack(1), _ack(2)], dump_message(trusted)) == []

    def test_a_nack_binds_nothing(self) -> None:
        sent = [(1, _body(INSTALL, 1)), (2, _body(UPGRADE, 2))]
        assert acked_in_force(sent, [_ack(1), _ack(2, ok=False)], _body(INSTALL, 1)) == []

    def test_an_ack_with_nothing_held_and_a_status_never_sent_are_found(self) -> None:
        sent = [(1, _body(INSTALL, 1))]
        assert acked_in_force(sent, [_ack(1)], None) == [
            "the unit acked desired status #1 but holds none"
        ]
        assert acked_in_force(sent, [_ack(5)], _body(UPGRADE, 9)) == [
            "the CM holds desired status #9, which the cloud never sent",
            "the unit acked desired status #5, which the cloud never sent",
        ]


def _status(boot: str, seq: int, **extra: Any) -> dict[str, Any]:
    return {"unitStatus": {"bootId": boot, "seq": seq, **extra}}


class TestSeqs:
    def test_growing_seqs_per_boot_hold_across_interleaved_boots(self) -> None:
        records = [_status("a", 1), _status("a", 2), _status("b", 100), _status("a", 3)]
        assert seqs_never_go_back(records) == []

    def test_a_seq_that_goes_back_within_a_boot_is_found(self) -> None:
        records = [_status("a", 1), _status("a", 3), _status("a", 2)]
        assert seqs_never_go_back(records) == ["boot a: seq 2 arrived after seq 3 (record 2)"]

    def test_a_resend_of_the_same_status_is_fine_another_status_is_not(self) -> None:
        records = [_status("a", 1), _status("a", 2), _status("a", 1)]
        assert seqs_never_go_back(records) == []
        records.append(_status("a", 2, isDeltaInfo=True))
        assert seqs_never_go_back(records) == ["boot a: seq 2 arrived again with another status"]

    def test_statuses_without_a_number_are_skipped(self) -> None:
        records = [_status("a", 5), {"unitStatus": {"bootId": "a"}}, {"unitStatus": {}}]
        assert seqs_never_go_back(records) == []


def _event(t: int, action: str, cid: str, version: str = "1.0.0", node: str = "n1"):
    labels = {
        LABEL_ITEM: ALPHA,
        LABEL_SUBJECT: "subj1",
        LABEL_INSTANCE: "0",
        LABEL_VERSION: version,
        LABEL_NODE: node,
    }
    return ContainerEvent(t, action, cid, labels)


class TestContainers:
    def test_a_restart_and_a_blue_green_replacement_are_fine(self) -> None:
        events = [
            _event(1, "running", "c1"),
            _event(2, "die", "c1"),
            _event(3, "start", "c1"),
            _event(4, "start", "c2", version="2.0.0"),
            _event(5, "die", "c1"),
            _event(6, "destroy", "c1"),
        ]
        assert no_instance_ran_twice(events) == []

    def test_two_containers_of_one_instance_and_version_are_found_in_time_order(self) -> None:
        events = [
            _event(3, "die", "c1"),
            _event(2, "start", "c2", node="n2"),
            _event(1, "start", "c1"),
        ]
        problems = no_instance_ran_twice(events)
        assert problems == [
            "svc-alpha subj1 0 1.0.0 runs twice: container c2 on n2 started while c1 on n1 ran"
        ]
        moved = [_event(1, "start", "c1"), _event(2, "die", "c1"), _event(3, "start", "c2")]
        assert no_instance_ran_twice(moved) == []

    def test_an_engine_event_is_read_with_its_labels(self) -> None:
        raw = {
            "Type": "container",
            "Action": "start",
            "Actor": {"ID": "abc", "Attributes": {LABEL_ITEM: ALPHA, "name": "x"}},
            "time": 1,
            "timeNano": 1_000_000_123,
        }
        event = ContainerEvent.from_engine(raw)
        assert event is not None
        assert (event.time_ns, event.action, event.container) == (1_000_000_123, "start", "abc")
        assert event.instance[0] == ALPHA
        assert ContainerEvent.from_engine({"Type": "network", "Action": "connect"}) is None


def _instances(node: str, state: str, message: str | None = None) -> dict[str, Any]:
    inst: dict[str, Any] = {"node": {"codename": node}, "instance": 0, "state": state}
    if message is not None:
        inst["errorInfo"] = {"aosCode": 1, "message": message}
    return {"instances": [{"item": {"id": ALPHA}, "instances": [inst]}]}


class TestCrashes:
    def test_a_crash_reported_on_a_node_that_lost_power_is_found(self) -> None:
        crashed = _instances("node-2", "failed", "CrashLoopBackOff: container keeps exiting")
        assert crashes_reported([crashed], ["node-2"]) == [
            "svc-alpha 0 on node-2 reported failed: CrashLoopBackOff: container keeps exiting"
        ]
        assert crashes_reported([crashed], ["node-1"]) == []

    def test_an_excused_exit_and_a_node_away_are_no_crash(self) -> None:
        statuses = [
            _instances("node-2", "activating"),
            _instances("node-2", "failed", "instance is not running on its node"),
        ]
        assert crashes_reported(statuses, ["node-2"]) == []

    def test_a_counted_crash_in_the_sm_state_is_found(self, tmp_path: Path) -> None:
        state = {
            "health": [
                {"key": [ALPHA, "subj1", 0], "record": {"crashes": 0}},
                {"key": [BETA, "subj1", 1], "record": {"crashes": 2, "reason": "CrashLoopBackOff"}},
            ]
        }
        path = tmp_path / "sm-state.json"
        path.write_bytes(orjson.dumps(state))
        assert crashes_counted("node-2", read_sm_state(path)) == [
            "node-2: svc-beta/subj1/1 counts 2 crashes (CrashLoopBackOff)"
        ]
        assert read_sm_state(tmp_path / "none.json") == {}
