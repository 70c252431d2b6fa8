"""compare: the one rule for "identical (ignore it) or not (restart the cycle)"."""

from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aoscore_py.cm.updatemanager.compare import Change, Changes, compare
from aoscore_py.protocol import (
    DesiredInstance,
    DesiredItem,
    DesiredNodeState,
    DesiredNodeStatus,
    DesiredStatus,
    Identity,
    NodeConfig,
    UnitConfig,
    dump_message,
    parse_message,
)

from .strategies import (
    MUTATIONS,
    desired_statuses,
    full_desired_statuses,
    mutations,
    reordered,
)

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# run once per kind of edit (about 40 of them)
EDITS = settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def node(name: str, state: DesiredNodeState = DesiredNodeState.PROVISIONED) -> DesiredNodeStatus:
    return DesiredNodeStatus(Identity(codename=name), state)


def instance(item: str, subject: str, **kw: object) -> DesiredInstance:
    return DesiredInstance(Identity(id=item), Identity(id=subject), **kw)  # type: ignore[arg-type]


class TestIdenticalNeedsNothing:
    @SETTINGS
    @given(desired_statuses)
    def test_a_status_compared_with_itself_is_empty(self, ds: DesiredStatus) -> None:
        changes = compare(ds, ds)
        assert changes.empty, changes.summary()
        assert changes.summary() == "none"

    @SETTINGS
    @given(desired_statuses, st.randoms(use_true_random=False), st.none() | st.text(min_size=1))
    def test_order_of_entries_and_correlation_id_do_not_matter(
        self, ds: DesiredStatus, rnd, correlation_id: str | None
    ) -> None:
        again = reordered(ds, rnd, correlation_id)
        assert compare(ds, again).empty, compare(ds, again).summary()
        assert compare(again, ds).empty

    @SETTINGS
    @given(desired_statuses)
    def test_a_status_read_back_from_storage_equals_the_one_sent(self, ds: DesiredStatus) -> None:
        # The handler stores the desired status as JSON and compares the cloud's next one with
        # what it reads back after a restart: a resend of the same status must be ignored.
        stored = parse_message(dump_message(ds))
        assert isinstance(stored, DesiredStatus)
        assert compare(stored, ds).empty, compare(stored, ds).summary()

    @SETTINGS
    @given(desired_statuses)
    def test_the_first_status_is_never_ignored(self, ds: DesiredStatus) -> None:
        changes = compare(None, ds)
        assert not changes.empty
        assert changes.summary() != "none"


def _camel(name: str) -> str:
    return re.sub(r"_(.)", lambda m: m[1].upper(), name)


class TestEveryChangeIsDetected:
    def test_every_unit_config_field_has_an_edit(self) -> None:
        # A field the strategies never vary is a field whose comparison nothing checks.
        node_fields = {f.name for f in dataclasses.fields(NodeConfig)} - {"node"}
        config_fields = {f.name for f in dataclasses.fields(UnitConfig)} - {"nodes"}
        wanted = {f"unitConfig.node.{_camel(f)}" for f in node_fields} | {
            f"unitConfig.{_camel(f)}" for f in config_fields
        }
        assert wanted - set(MUTATIONS) == set()

    @pytest.mark.parametrize("name", sorted(MUTATIONS))
    @EDITS
    @given(data=st.data())
    def test_a_single_edit_is_reported_with_its_kind_and_key(
        self, name: str, data: st.DataObject
    ) -> None:
        ds = data.draw(full_desired_statuses | desired_statuses, label="desired")
        m = data.draw(mutations(ds, name), label="mutation")
        forward, backward = compare(ds, m.desired), compare(m.desired, ds)
        assert not forward.empty
        assert not backward.empty
        # the edit touched one kind of entry only, and the report names that entry
        assert {c.kind for c in forward.changes} == {m.kind}, forward.summary()
        assert {c.kind for c in backward.changes} == {m.kind}, backward.summary()
        assert m.key in {c.key for c in forward.changes + backward.changes}, forward.summary()

    @SETTINGS
    @given(st.data())
    def test_changes_are_sorted_and_deterministic(self, data: st.DataObject) -> None:
        ds = data.draw(desired_statuses)
        other = data.draw(desired_statuses)
        changes = compare(ds, other)
        assert list(changes.changes) == sorted(changes.changes)
        assert compare(ds, other) == changes

    def test_node_state_change_names_node_and_states(self) -> None:
        old = DesiredStatus(nodes=(node("n1"), node("n2")))
        new = DesiredStatus(nodes=(node("n2"), node("n1", DesiredNodeState.PAUSED)))
        assert compare(old, new).changes == (Change("node", "n1", "'provisioned' -> 'paused'"),)

    def test_instance_count_change_names_each_index(self) -> None:
        old = DesiredStatus(instances=(instance("svc", "sub", num_instances=1),))
        new = DesiredStatus(instances=(instance("svc", "sub", num_instances=3),))
        assert compare(old, new).changes == (
            Change("instance", "svc/sub/1", "added"),
            Change("instance", "svc/sub/2", "added"),
        )
        assert compare(new, old).changes == (
            Change("instance", "svc/sub/1", "removed"),
            Change("instance", "svc/sub/2", "removed"),
        )

    def test_instances_whose_ids_contain_a_slash_are_not_confused(self) -> None:
        # ("a/b", "c") and ("a", "b/c") are different instances; the priority of one changes.
        old = DesiredStatus(
            instances=(
                instance("a/b", "c", priority=1, num_instances=1),
                instance("a", "b/c", priority=2, num_instances=1),
            )
        )
        new = DesiredStatus(
            instances=(
                instance("a/b", "c", priority=5, num_instances=1),
                instance("a", "b/c", priority=2, num_instances=1),
            )
        )
        changes = compare(old, new)
        assert not changes.empty
        assert {c.kind for c in changes.changes} == {"instance.priority"}

    def test_instances_whose_ids_contain_a_slash_compare_equal_in_any_order(self) -> None:
        one = instance("a/b", "c", priority=1, num_instances=1)
        two = instance("a", "b/c", priority=2, num_instances=2)
        assert compare(
            DesiredStatus(instances=(one, two)), DesiredStatus(instances=(two, one))
        ).empty

    def test_unit_config_label_change_is_detected_with_same_version(self) -> None:
        def config(*labels: str) -> DesiredStatus:
            return DesiredStatus(
                unit_config=UnitConfig(
                    "1.0.0", "1", (NodeConfig(Identity(codename="n1"), labels=labels),)
                )
            )

        assert [c.kind for c in compare(config("gpu"), config("gpu", "cam")).changes] == [
            "unitConfig"
        ]
        assert compare(config("gpu", "cam"), config("cam", "gpu")).empty


class TestSummary:
    def test_empty_is_none(self) -> None:
        assert Changes().empty
        assert Changes().summary() == "none"

    def test_lists_changes_then_counts_the_rest(self) -> None:
        changes = Changes(tuple(Change("node", f"n{i}", "added") for i in range(7)))
        summary = changes.summary(limit=3)
        assert summary == "node n0: added; node n1: added; node n2: added; and 4 more"
        assert "more" not in changes.summary(limit=7)

    def test_unit_config_summary_says_what_changed(self) -> None:
        def with_config(version: str, priority: int) -> DesiredStatus:
            nodes = (NodeConfig(Identity(codename="n1"), priority=priority),)
            return DesiredStatus(unit_config=UnitConfig(version, "1", nodes))

        assert compare(with_config("1", 0), with_config("2", 0)).summary() == (
            "unitConfig: '1' -> '2'"
        )
        same_version = compare(with_config("1", 0), with_config("1", 1)).summary()
        assert same_version.startswith("unitConfig: ")
        assert "'1' -> '1'" not in same_version  # not "no change" in disguise
        assert "1" in same_version

    def test_first_status_summary(self) -> None:
        assert compare(None, DesiredStatus()).summary() == "desiredStatus: first one"

    def test_item_change_detail_shows_old_and_new(self) -> None:
        def with_item(version: str) -> DesiredStatus:
            ident = Identity(id="svc", type="service")
            return DesiredStatus(items=(DesiredItem(ident, version, "sha256:" + "0" * 64),))

        (change,) = compare(with_item("1.0"), with_item("2.0")).changes
        assert change.kind == "item" and change.key == "svc"
        assert "'1.0'" in change.detail and "'2.0'" in change.detail
