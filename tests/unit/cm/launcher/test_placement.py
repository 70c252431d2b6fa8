"""place: which node runs each instance, and why an instance runs nowhere."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.cm.launcher.placement import NodeCandidate, Placement, WantedInstance, place
from aoscore_py.nodes import InstanceKey


def key(item: str, index: int = 0, subject: str = "s") -> InstanceKey:
    return InstanceKey(item, subject, index)


def want(item: str, index: int = 0, *, priority: int = 0, labels: tuple[str, ...] = ()):
    return WantedInstance(key(item, index), priority, frozenset(labels))


def node(name: str, *labels: str, priority: int = 0, paused: bool = False, runtime: bool = True):
    return NodeCandidate(name, priority, frozenset(labels), paused, runtime)


def where(placements: list[Placement]) -> dict[str, str | None]:
    return {str(p.key): p.node for p in placements}


class TestEligibility:
    def test_an_instance_goes_only_to_a_node_with_all_its_labels(self) -> None:
        nodes = [node("big", "gpu", priority=9), node("cam", "camera", "gpu"), node("n", "camera")]
        result = place([want("svc", labels=("camera", "gpu"))], nodes)
        assert result == [Placement(key("svc"), "cam")]

    def test_paused_nodes_are_skipped(self) -> None:
        nodes = [node("a", priority=5, paused=True), node("b")]
        assert where(place([want("svc")], nodes)) == {"svc/s/0": "b"}

    def test_nodes_without_runtime_are_skipped(self) -> None:
        nodes = [node("a", priority=5, runtime=False), node("b")]
        assert where(place([want("svc")], nodes)) == {"svc/s/0": "b"}


class TestRefusals:
    def test_no_node_known(self) -> None:
        (p,) = place([want("svc")], [])
        assert p.node is None
        assert p.reason == "no node is known"

    def test_every_node_paused(self) -> None:
        (p,) = place([want("svc")], [node("a", paused=True), node("b", paused=True)])
        assert p.node is None
        assert "paused" in p.reason

    def test_missing_labels_are_named(self) -> None:
        (p,) = place([want("svc", labels=("gpu", "tpu"))], [node("a", "gpu"), node("b")])
        assert p.node is None
        assert "'tpu'" in p.reason
        assert "'gpu'" not in p.reason  # one node has it: not the problem

    def test_labels_only_on_a_paused_node(self) -> None:
        (p,) = place([want("svc", labels=("gpu",))], [node("a", "gpu", paused=True), node("b")])
        assert p.node is None
        assert "gpu" in p.reason

    def test_a_refused_instance_does_not_stop_the_others(self) -> None:
        result = place([want("gpu", labels=("gpu",)), want("plain")], [node("a")])
        assert where(result) == {"gpu/s/0": None, "plain/s/0": "a"}


class TestChoice:
    def test_highest_node_priority_wins(self) -> None:
        nodes = [node("low", priority=1), node("high", priority=7), node("mid", priority=3)]
        assert set(where(place([want("a"), want("b")], nodes)).values()) == {"high"}

    def test_equal_nodes_share_the_load(self) -> None:
        wanted = [want("svc", i) for i in range(6)]
        nodes = [node("n2"), node("n1"), node("n3")]
        result = where(place(wanted, nodes))
        assert sorted(result.values()) == ["n1", "n1", "n2", "n2", "n3", "n3"]

    def test_ties_go_to_the_smallest_name(self) -> None:
        assert where(place([want("svc")], [node("b"), node("a"), node("c")])) == {"svc/s/0": "a"}

    def test_higher_priority_instances_choose_first(self) -> None:
        # "a" sorts first, but "z" has the higher priority and so gets the preferred node.
        result = where(place([want("a"), want("z", priority=5)], [node("n1"), node("n2")]))
        assert result == {"a/s/0": "n2", "z/s/0": "n1"}


class TestStickiness:
    def test_an_instance_stays_on_its_node_while_it_qualifies(self) -> None:
        nodes = [node("best", priority=9), node("old")]
        assert where(place([want("svc")], nodes, {key("svc"): "old"})) == {"svc/s/0": "old"}

    def test_it_moves_when_its_node_is_paused(self) -> None:
        nodes = [node("best", priority=9), node("old", paused=True)]
        assert where(place([want("svc")], nodes, {key("svc"): "old"})) == {"svc/s/0": "best"}

    def test_it_moves_when_its_node_lost_a_label(self) -> None:
        nodes = [node("other", "gpu"), node("old")]
        result = place([want("svc", labels=("gpu",))], nodes, {key("svc"): "old"})
        assert where(result) == {"svc/s/0": "other"}

    def test_it_moves_when_its_node_is_gone(self) -> None:
        assert where(place([want("svc")], [node("a")], {key("svc"): "gone"})) == {"svc/s/0": "a"}

    def test_new_instances_balance_against_those_that_stay(self) -> None:
        # "b" already runs on n1; the new "a" sorts before it but must still go to the idle n2.
        result = place([want("a"), want("b")], [node("n1"), node("n2")], {key("b"): "n1"})
        assert where(result) == {"a/s/0": "n2", "b/s/0": "n1"}

    def test_many_staying_instances_push_new_ones_elsewhere(self) -> None:
        current = {key("old", i): "n1" for i in range(3)}
        wanted = [want("old", i) for i in range(3)] + [want("new", i) for i in range(3)]
        result = where(place(wanted, [node("n1"), node("n2")], current))
        assert [result[f"new/s/{i}"] for i in range(3)] == ["n2", "n2", "n2"]


# --- properties -----------------------------------------------------------------------------------

LABELS = ("gpu", "cam", "edge")
label_sets = st.frozensets(st.sampled_from(LABELS), max_size=3)
node_names = st.sampled_from(["n0", "n1", "n2", "n3", "n4"])
candidates = st.lists(
    st.builds(
        NodeCandidate,
        node_names,
        st.integers(0, 2),
        label_sets,
        st.booleans(),
        st.sampled_from([True, True, True, False]),
    ),
    max_size=5,
    unique_by=lambda n: n.node,
)
keys = st.builds(InstanceKey, st.sampled_from("abc"), st.sampled_from("st"), st.integers(0, 2))
wanteds = st.lists(
    st.builds(WantedInstance, keys, st.integers(0, 2), label_sets),
    max_size=8,
    unique_by=lambda w: w.key,
)


def qualifies(n: NodeCandidate, w: WantedInstance) -> bool:
    return not n.paused and n.has_runtime and w.labels <= n.labels


@st.composite
def problems(draw):
    nodes = draw(candidates)
    wanted = draw(wanteds)
    names = [n.node for n in nodes] + ["gone"]
    current = draw(
        st.dictionaries(
            st.sampled_from([w.key for w in wanted] or [key("x")]), st.sampled_from(names)
        )
    )
    return wanted, nodes, current


PROPS = settings(max_examples=60, deadline=None)


class TestProperties:
    @PROPS
    @given(problems())
    def test_every_placement_respects_the_rules(self, problem) -> None:
        wanted, nodes, current = problem
        result = place(wanted, nodes, current)
        by_name = {n.node: n for n in nodes}
        assert [p.key for p in result] == sorted(w.key for w in wanted)
        for w, p in zip(sorted(wanted, key=lambda w: w.key), result, strict=True):
            fit = [n for n in nodes if qualifies(n, w)]
            if p.node is None:
                assert not fit, "refused although a node qualifies"
                assert p.reason
                continue
            chosen = by_name[p.node]
            assert qualifies(chosen, w)
            if current.get(w.key) in {n.node for n in fit}:
                assert p.node == current[w.key], "moved although its node still qualifies"
            else:
                assert chosen.priority == max(n.priority for n in fit)

    @PROPS
    @given(problems(), st.randoms(use_true_random=False))
    def test_placement_is_deterministic(self, problem, rnd: random.Random) -> None:
        wanted, nodes, current = problem
        first = place(wanted, nodes, current)
        shuffled_wanted, shuffled_nodes = list(wanted), list(nodes)
        rnd.shuffle(shuffled_wanted)
        rnd.shuffle(shuffled_nodes)
        assert place(shuffled_wanted, shuffled_nodes, dict(current)) == first

    @PROPS
    @given(problems())
    def test_placing_again_from_the_result_moves_nothing(self, problem) -> None:
        wanted, nodes, current = problem
        first = place(wanted, nodes, current)
        again = place(wanted, nodes, {p.key: p.node for p in first if p.node is not None})
        assert again == first
