"""validate: a desired status that parses but cannot be applied as a whole is refused up front."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from aoscore_py.cm.updatemanager.handler import validate
from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.protocol import (
    DesiredInstance,
    DesiredItem,
    DesiredNodeState,
    DesiredNodeStatus,
    DesiredStatus,
    DesiredSubject,
    Identity,
    NodeConfig,
    SubjectType,
    UnitConfig,
)

from .strategies import desired_statuses

DIGEST = "sha256:" + "a" * 64


def item(key: str, version: str = "1.0") -> DesiredItem:
    return DesiredItem(Identity(id=key, type="service"), version, DIGEST)


def inst(item_id: str, subject: str, n: int = 1) -> DesiredInstance:
    return DesiredInstance(Identity(id=item_id), Identity(id=subject), num_instances=n)


def node(name: str) -> DesiredNodeStatus:
    return DesiredNodeStatus(Identity(codename=name), DesiredNodeState.PROVISIONED)


def subject(key: str, kind: SubjectType = SubjectType.GROUP) -> DesiredSubject:
    return DesiredSubject(Identity(id=key), kind)


def refusal(ds: DesiredStatus) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        validate(ds)
    return info.value


class TestDuplicatesAreRefused:
    def test_duplicate_item_names_the_second_entry(self) -> None:
        err = refusal(DesiredStatus(items=(item("a"), item("b"), item("a", "2.0"))))
        assert err.path == "$.items[2]"
        assert "duplicate item" in err.reason and "'a'" in err.reason
        assert err.code == AosCode.INVALID_ARGUMENT

    def test_duplicate_instance_pair(self) -> None:
        err = refusal(DesiredStatus(instances=(inst("a", "s"), inst("a", "s", 3))))
        assert err.path == "$.instances[1]"
        assert "duplicate instance" in err.reason

    def test_duplicate_node(self) -> None:
        err = refusal(DesiredStatus(nodes=(node("n1"), node("n1"))))
        assert err.path == "$.nodes[1]"
        assert "'n1'" in err.reason

    def test_duplicate_subject_even_of_another_type(self) -> None:
        ds = DesiredStatus(subjects=(subject("s"), subject("s", SubjectType.USER)))
        assert refusal(ds).path == "$.subjects[1]"

    def test_duplicate_unit_config_node(self) -> None:
        nodes = (NodeConfig(Identity(codename="n1")), NodeConfig(Identity(codename="n1")))
        err = refusal(DesiredStatus(unit_config=UnitConfig("1", "1", nodes)))
        assert err.path == "$.unitConfig.nodes[1]"

    def test_an_item_named_by_id_and_one_by_the_same_codename_collide(self) -> None:
        # both are the key the unit tells items apart by
        other = DesiredItem(Identity(codename="a"), "1.0", DIGEST)
        assert refusal(DesiredStatus(items=(item("a"), other))).path == "$.items[1]"


class TestDistinctEntriesPass:
    def test_one_item_for_several_subjects_and_one_subject_for_several_items(self) -> None:
        validate(DesiredStatus(instances=(inst("a", "s"), inst("a", "t"), inst("b", "s"))))

    def test_same_key_in_different_sections(self) -> None:
        nodes_cfg = UnitConfig("1", "1", (NodeConfig(Identity(codename="x")),))
        validate(
            DesiredStatus(
                nodes=(node("x"),),
                unit_config=nodes_cfg,
                items=(item("x"),),
                subjects=(subject("x"),),
            )
        )

    @settings(max_examples=40, deadline=None)
    @given(desired_statuses)
    def test_generated_valid_statuses_pass(self, ds: DesiredStatus) -> None:
        validate(ds)
