"""balance: AosCore's placement rules, table-driven, then properties against a naive reference.

Each case names the nodes, the wanted groups, where instances run now, and what is expected per
instance: "node", "node/runtime", or "!text" for a refusal whose reason contains the text.
Cases marked "AosCore" restate a test of aos_core_lib_cpp `src/core/cm/launcher/tests/
launcher.cpp`: the `Balancing` test's cases (node priority, labels, resources, cpu ratio, ram
ratio, the first placement of rebalancing, rebalancing policy), `PlatformFiltering`,
`UnlimitedSharedResource`. Their nodes have 1000 DMIPS, 1024 bytes of RAM, one runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.cm.launcher.balancer import GroupPlan, Slot, balance
from aoscore_py.cm.launcher.shapes import Demand, NodeSpec, Platform, RuntimeSpec
from aoscore_py.errors import AosCode
from aoscore_py.nodes import InstanceKey
from aoscore_py.nodes.itemconfig import (
    DEFAULT_RUNTIMES,
    BalancingPolicy,
    ItemConfig,
    Quotas,
    RequestedResources,
    ResourceRequest,
    requested_cpu,
    requested_ram,
    shared_resources,
)

MIB = 1 << 20
X86 = Platform("linux", "x86_64", "generic")


def rt(name: str, kind: str | None = None, **kw) -> RuntimeSpec:
    return RuntimeSpec(name, kind or name, **kw)


def node(name: str, *labels: str, prio: int = 0, dmips=1000, ram=1024, runtimes=("runc",), **kw):
    rts = tuple(r if isinstance(r, RuntimeSpec) else rt(r, platform=X86) for r in runtimes)
    return NodeSpec(
        name,
        priority=prio,
        labels=frozenset(labels),
        max_dmips=dmips,
        total_ram=ram,
        runtimes=rts,
        **kw,
    )


def config(*runtimes: str, cpu=None, ram=None, ask_cpu=None, ask_ram=None, res=(), **kw):
    asked = None
    if ask_cpu is not None or ask_ram is not None:
        asked = RequestedResources(cpu=ask_cpu, ram=ask_ram)
    return ItemConfig(
        runtimes=runtimes,
        quotas=Quotas(cpu_dmips_limit=cpu, ram_limit=ram),
        requested_resources=asked,
        resources=tuple(ResourceRequest(r) for r in res),
        **kw,
    )


def want(item: str, count: int = 1, prio: int = 0, *labels: str, cfg=None, platform=None):
    return Demand(item, "s", count, prio, frozenset(labels), cfg, platform)


def key(text: str) -> InstanceKey:
    item, index = text.rsplit("/", 1)
    return InstanceKey(item, "s", int(index))


@dataclass
class Case:
    nodes: list[NodeSpec]
    wanted: list[Demand]
    expect: dict[str, str]
    current: dict[str, str] = field(default_factory=dict)


def check(case: Case) -> None:
    plans = balance(case.wanted, case.nodes, {key(k): v for k, v in case.current.items()})
    got = {f"{k.item_id}/{k.instance}": slot for plan in plans for k, slot in plan}
    assert set(got) == set(case.expect)
    for name, expected in case.expect.items():
        slot = got[name]
        if expected.startswith("!"):
            assert slot.node is None, f"{name}: placed on {slot.node}, expected a refusal"
            assert expected[1:] in slot.reason, f"{name}: {slot.reason!r}"
        elif "/" in expected:
            assert f"{slot.node}/{slot.runtime}" == expected, f"{name}: {slot}"
        else:
            assert slot.node == expected, f"{name}: {slot}"


RUNC = config("runc")
AOS_NODES = [
    node("localSM"),
    node("remoteSM1"),
    node("remoteSM2"),
    node("runxSM", runtimes=("runx",)),
]


def aos_nodes(**prios: int) -> list[NodeSpec]:
    return [
        NodeSpec(
            n.id,
            priority=prios.get(n.id, 0),
            max_dmips=1000,
            total_ram=1024,
            runtimes=n.runtimes,
            labels=n.labels,
            resources=n.resources,
        )
        for n in AOS_NODES
    ]


CASES = {
    # --- AosCore: Balancing / "node priority" ---------------------------------------------------
    "aos node priority": Case(
        aos_nodes(localSM=50, remoteSM1=100, remoteSM2=100),
        [
            want("service1", 2, 100, cfg=config("runc", ask_cpu=100)),
            want("service2", 2, 50, cfg=config("runc", ask_cpu=100)),
            want("service3", 2, 0, cfg=config("runx", ask_cpu=100)),
        ],
        {
            "service1/0": "remoteSM1/runc",
            "service1/1": "remoteSM2/runc",
            "service2/0": "remoteSM1/runc",
            "service2/1": "remoteSM2/runc",
            "service3/0": "runxSM/runx",
            "service3/1": "runxSM/runx",
        },
    ),
    # --- AosCore: Balancing / "labels" ----------------------------------------------------------
    "aos labels": Case(
        [
            node("localSM", "label1", prio=100),
            node("remoteSM1", "label2", prio=50),
            node("remoteSM2"),
            node("runxSM", runtimes=("runx",)),
        ],
        [
            want("service1", 2, 100, "label2", cfg=RUNC),
            want("service2", 2, 50, "label1", cfg=RUNC),
            want("service3", 2, 0, "label3", cfg=config("runx")),
        ],
        {
            "service1/0": "remoteSM1",
            "service1/1": "remoteSM1",
            "service2/0": "localSM",
            "service2/1": "localSM",
            "service3/0": "!no node with labels [label3]",
            "service3/1": "!no node with labels [label3]",
        },
    ),
    # --- AosCore: Balancing / "resources" -------------------------------------------------------
    "aos resources": Case(
        [
            node("localSM", prio=100, resources=(("resource1", 2), ("resource3", 2))),
            node("remoteSM1", prio=50, resources=(("resource1", 2), ("resource2", 2))),
            node("remoteSM2"),
            node("runxSM", runtimes=("runx",)),
        ],
        [
            want("service1", 2, 100, cfg=config("runc", res=("resource1", "resource2"))),
            want("service2", 2, 50, cfg=config("runc", res=("resource1",))),
            want("service3", 2, 0, cfg=config("runc", res=("resource3",))),
        ],
        {
            "service1/0": "remoteSM1",
            "service1/1": "remoteSM1",
            "service2/0": "localSM",
            "service2/1": "localSM",
            "service3/0": "localSM",
            "service3/1": "localSM",
        },
    ),
    # --- AosCore: Balancing / "cpu ratio": 300 of 1000 DMIPS, three fit on the first node ------
    "aos cpu ratio": Case(
        aos_nodes(localSM=100),
        [want("service1", 5, 100, cfg=config("runc", cpu=500, ask_cpu=300))],
        {
            "service1/0": "localSM",
            "service1/1": "localSM",
            "service1/2": "localSM",
            "service1/3": "remoteSM1",
            "service1/4": "remoteSM2",
        },
    ),
    # --- AosCore: Balancing / "ram ratio" -------------------------------------------------------
    "aos ram ratio": Case(
        aos_nodes(localSM=100),
        [want("service1", 5, 100, cfg=config("runc", ram=500, ask_ram=300))],
        {
            "service1/0": "localSM",
            "service1/1": "localSM",
            "service1/2": "localSM",
            "service1/3": "remoteSM1",
            "service1/4": "remoteSM2",
        },
    ),
    # AosCore's "ram ratio" with the other nodes gone: the rest fail for RAM (its noMemory).
    "aos ram ratio, one node": Case(
        [node("localSM", prio=100)],
        [want("service1", 5, 100, cfg=config("runc", ram=500, ask_ram=300))],
        {
            "service1/0": "localSM",
            "service1/1": "localSM",
            "service1/2": "localSM",
            "service1/3": "!not enough RAM: needs 300 bytes, most free 124 bytes on localSM",
            "service1/4": "!not enough RAM",
        },
    ),
    # --- AosCore: Balancing / "rebalancing", its first placement: quota 1000 x 50 % each -------
    "aos rebalancing, first placement": Case(
        aos_nodes(localSM=100, remoteSM1=50, remoteSM2=50),
        [
            want("service1", 1, 100, cfg=config("runc", cpu=1000)),
            want("service2", 1, 50, cfg=config("runc", cpu=1000)),
            want("service3", 1, 50, cfg=config("runc", cpu=1000)),
        ],
        {"service1/0": "localSM", "service2/0": "localSM", "service3/0": "remoteSM1"},
    ),
    # --- AosCore: Balancing / "rebalancing policy": service3 stays where it runs -------------
    "aos rebalancing policy": Case(
        aos_nodes(localSM=100, remoteSM1=50, remoteSM2=50),
        [
            want("service1", 1, 100, cfg=config("runc", cpu=1000)),
            want("service2", 1, 50, cfg=config("runc", cpu=1000)),
            want(
                "service3",
                1,
                50,
                cfg=config("runc", cpu=1000, balancing_policy=BalancingPolicy.DISABLED),
            ),
        ],
        {"service1/0": "localSM", "service2/0": "localSM", "service3/0": "remoteSM1"},
        current={"service3/0": "remoteSM1"},
    ),
    # --- AosCore: PlatformFiltering -------------------------------------------------------------
    "aos platform filtering": Case(
        [
            node("localSM", runtimes=(rt("runc", platform=Platform("linux", "arm64", "generic")),)),
            node("remoteSM1", runtimes=(rt("runc", platform=Platform("windows", "x86_64")),)),
            node("remoteSM2", runtimes=(rt("runc", platform=Platform("linux", "x86_64")),)),
        ],
        [
            want("service1", 1, 100, cfg=RUNC, platform=Platform("linux", "arm32", "generic")),
            want("service2", 1, 50, cfg=RUNC, platform=Platform("macos", "x86_64", "generic")),
            want("service3", 1, 25, cfg=RUNC, platform=Platform("linux", "x86_64", "generic")),
        ],
        {
            "service1/0": "!no runtime for platform linux/arm32/generic",
            "service2/0": "!no runtime for platform macos/x86_64",
            "service3/0": "remoteSM2",
        },
    ),
    # --- AosCore: UnlimitedSharedResource -------------------------------------------------------
    "aos unlimited shared resource": Case(
        [node("localSM", resources=(("camera", 0),))],
        [want("service1", 3, 50, cfg=config("runc", res=("camera",)))],
        {"service1/0": "localSM", "service1/1": "localSM", "service1/2": "localSM"},
    ),
    # --- candidates -----------------------------------------------------------------------------
    "paused, error, unprovisioned, disconnected nodes are skipped": Case(
        [
            node("a", prio=9, state="paused"),
            node("b", prio=9, state="error"),
            node("c", prio=9, state="unprovisioned"),
            node("d", prio=9, connected=False),
            node("e"),
        ],
        [want("svc", cfg=RUNC)],
        {"svc/0": "e"},
    ),
    "no node known": Case([], [want("svc")], {"svc/0": "!no node is known"}),
    "no usable node names their states": Case(
        [node("a", state="paused"), node("b", connected=False)],
        [want("svc")],
        {"svc/0": "!no connected provisioned node (a: paused, b: disconnected)"},
    ),
    "only the missing labels are named": Case(
        [node("a", "gpu"), node("b", "cam")],
        [want("svc", 1, 0, "gpu", "tpu", cfg=RUNC)],
        {"svc/0": "!no node with labels [tpu]"},
    ),
    "labels spread over two nodes are not enough": Case(
        [node("a", "gpu"), node("b", "cam")],
        [want("svc", 1, 0, "cam", "gpu", cfg=RUNC)],
        {"svc/0": "!no node with labels [cam, gpu]"},
    ),
    "a resource no node has": Case(
        [node("a", resources=(("gpu", 1),))],
        [want("svc", cfg=config("runc", res=("camera",)))],
        {"svc/0": "!no node with resources [camera]"},
    ),
    "a runtime type no node has": Case(
        [node("a", runtimes=("runc", "crun"))],
        [want("svc", cfg=config("xen"))],
        {"svc/0": "!no node with a runtime of type [xen]"},
    ),
    "no runtimes named: crun, docker, runc, not others": Case(
        [node("a", prio=5, runtimes=("xen",)), node("b", runtimes=("docker",))],
        [want("svc", cfg=config()), want("raw")],
        {"svc/0": "b/docker", "raw/0": "b/docker"},
    ),
    "platform names: amd64 is x86_64, os ignores case, unknown is not checked": Case(
        [
            node("a", prio=2, runtimes=(rt("docker", platform=Platform("Linux", "x86_64")),)),
            node("b", prio=1, runtimes=(rt("docker"),)),
        ],
        [
            want("amd", cfg=config(), platform=Platform("linux", "amd64")),
            want("arm", cfg=config(), platform=Platform("linux", "arm64", "v8")),
        ],
        {"amd/0": "a", "arm/0": "b"},
    ),
    # --- requested resources --------------------------------------------------------------------
    "the request is clamped to the quota": Case(
        [node("a", dmips=1000)],
        [want("svc", 3, cfg=config("runc", cpu=400, ask_cpu=800))],
        {"svc/0": "a", "svc/1": "a", "svc/2": "!not enough CPU: needs 400 DMIPS, most free 200"},
    ),
    "no request: quota x the node's ratio, capped at 100 %": Case(
        [node("a", dmips=1000, cpu_ratio=150)],
        [want("svc", 3, cfg=config("runc", cpu=400))],
        {"svc/0": "a", "svc/1": "a", "svc/2": "!needs 400 DMIPS"},
    ),
    "quota x ratio rounds half up": Case(
        [node("a", dmips=102)],
        [want("svc", 3, cfg=config("runc", cpu=101))],
        {"svc/0": "a", "svc/1": "a", "svc/2": "!needs 51 DMIPS, most free 0 DMIPS on a"},
    ),
    "skipResourceLimits books nothing": Case(
        [node("a", dmips=10, ram=10, resources=(("cam", 1),))],
        [
            want(
                "svc",
                3,
                cfg=config("runc", cpu=400, ram=400, res=("cam",), skip_resource_limits=True),
            )
        ],
        {"svc/0": "a", "svc/1": "a", "svc/2": "a"},
    ),
    "a node that reports no maxDmips is not limited on CPU": Case(
        [node("small", prio=1, dmips=100), node("unknown", dmips=None)],
        [want("svc", 2, cfg=config("runc", ask_cpu=100))],
        {"svc/0": "small", "svc/1": "unknown"},
    ),
    # --- runtimes -------------------------------------------------------------------------------
    "a runtime with its own pool books against it, by type name first": Case(
        [node("a", runtimes=(rt("docker"), rt("crun", allowed_dmips=300)))],
        [want("svc", 3, cfg=config("crun", "docker", ask_cpu=200))],
        {"svc/0": "a/crun", "svc/1": "a/docker", "svc/2": "a/docker"},
    ),
    "a runtime at max instances spills to the next node": Case(
        [node("a", prio=1, runtimes=(rt("runc", max_instances=2),)), node("b")],
        [want("svc", 3, cfg=RUNC)],
        {"svc/0": "a", "svc/1": "a", "svc/2": "b"},
    ),
    "every runtime at max instances": Case(
        [node("a", runtimes=(rt("runc", max_instances=1),))],
        [want("svc", 2, cfg=RUNC)],
        {"svc/0": "a", "svc/1": "!every fitting runtime is at max instances (a/runc)"},
    ),
    "shared resource slots run out": Case(
        [node("a", resources=(("camera", 2),))],
        [want("svc", 3, cfg=config("runc", res=("camera",)))],
        {"svc/0": "a", "svc/1": "a", "svc/2": "!no free slot of resources [camera]"},
    ),
    "RAM refusal in MiB names the node with the most free": Case(
        [node("node-1", ram=2048 * MIB), node("node-2", ram=768 * MIB)],
        [
            want("big", 1, 9, cfg=config("runc", ask_ram=1792 * MIB)),
            want("mid", 1, 5, cfg=config("runc", ask_ram=512 * MIB)),
            want("svc", 1, 0, cfg=config("runc", ask_ram=512 * MIB)),
        ],
        {
            "big/0": "node-1",
            "mid/0": "node-2",
            "svc/0": "!not enough RAM: needs 512 MiB, most free 256 MiB on node-1",
        },
    ),
    # --- choice ---------------------------------------------------------------------------------
    "ties: most free CPU, then most free RAM, then the node id": Case(
        [node("c", dmips=500, ram=900), node("b", dmips=500, ram=1000), node("a", dmips=400)],
        [want("x", 1, 2, cfg=RUNC), want("y", 1, 1, cfg=config("runc", ask_ram=200))],
        {"x/0": "b", "y/0": "b"},
    ),
    "higher priority groups choose first": Case(
        [node("n1", prio=1, dmips=100), node("n2", dmips=100)],
        [
            want("a", cfg=config("runc", ask_cpu=100)),
            want("z", 1, 5, cfg=config("runc", ask_cpu=100)),
        ],
        {"z/0": "n1", "a/0": "n2"},
    ),
    # --- our addition: no needless moves --------------------------------------------------------
    "an instance stays on its node though a better one exists": Case(
        [node("best", prio=9), node("old")],
        [want("svc", cfg=RUNC)],
        {"svc/0": "old"},
        current={"svc/0": "old"},
    ),
    "it moves when its node is paused": Case(
        [node("best", prio=9), node("old", state="paused")],
        [want("svc", cfg=RUNC)],
        {"svc/0": "best"},
        current={"svc/0": "old"},
    ),
    "it moves when its node has no room left for it": Case(
        [node("best", prio=9), node("old", dmips=100)],
        [want("svc", 2, cfg=config("runc", ask_cpu=60))],
        {"svc/0": "old", "svc/1": "best"},
        current={"svc/0": "old", "svc/1": "old"},
    ),
    "new instances balance against those that stay": Case(
        [node("n1"), node("n2")],
        [want("a", cfg=config("runc", ask_cpu=100)), want("b", cfg=config("runc", ask_cpu=100))],
        {"a/0": "n2", "b/0": "n1"},
        current={"b/0": "n1"},
    ),
    "a higher priority instance pushes a lower one out; it moves": Case(
        [node("gpu", "gpu", dmips=100), node("other", dmips=100)],
        [
            want("low", 1, 0, cfg=config("runc", ask_cpu=100)),
            want("vip", 1, 9, "gpu", cfg=config("runc", ask_cpu=100)),
        ],
        {"vip/0": "gpu", "low/0": "other"},
        current={"low/0": "gpu"},
    ),
    "an equal priority instance pushes nothing out": Case(
        [node("gpu", "gpu", dmips=100)],
        [
            want("b", 1, 0, cfg=config("runc", ask_cpu=100)),
            want("a", 1, 0, "gpu", cfg=config("runc", ask_cpu=100)),
        ],
        {"b/0": "gpu", "a/0": "!not enough CPU"},
        current={"b/0": "gpu"},
    ),
    "only the places needed are released": Case(
        [node("n", dmips=300, ram=300)],
        [
            want("cpu-hog", 1, 0, cfg=config("runc", ask_cpu=200)),
            want("ram-hog", 1, 0, cfg=config("runc", ask_ram=200)),
            want("vip", 1, 9, cfg=config("runc", ask_cpu=200)),
        ],
        {"vip/0": "n", "ram-hog/0": "n", "cpu-hog/0": "!not enough CPU"},
        current={"cpu-hog/0": "n", "ram-hog/0": "n"},
    ),
    "instances past numInstances are not kept": Case(
        [node("a", prio=1), node("b")],
        [want("svc", 1, cfg=RUNC)],
        {"svc/0": "a"},
        current={"svc/3": "b"},
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_case(case: Case) -> None:
    check(case)


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


class TestResults:
    def test_refusals_carry_aos_codes(self) -> None:
        plans = balance(
            [want("lbl", 1, 0, "x"), want("big", 2, cfg=config("runc", ask_cpu=600))],
            [node("a")],
        )
        slots = {p.item: p.slots for p in plans}
        assert slots["lbl"][0].code == AosCode.NOT_FOUND
        assert slots["big"][0].node == "a"
        assert slots["big"][1].code == AosCode.NO_MEMORY

    def test_plans_come_sorted_by_item_then_subject(self) -> None:
        demands = [Demand("b", "s", 1), Demand("a", "t", 1, 5), Demand("a", "s", 1)]
        plans = balance(demands, [node("n", runtimes=("docker",))])
        assert [(p.item, p.subject) for p in plans] == [("a", "s"), ("a", "t"), ("b", "s")]

    def test_a_group_iterates_as_instance_keys(self) -> None:
        plan = GroupPlan("svc", "s", (Slot("a", "runc"), Slot(None, None, 5, "no")))
        assert [k for k, _ in plan] == [InstanceKey("svc", "s", 0), InstanceKey("svc", "s", 1)]

    def test_equal_slots_are_shared(self) -> None:
        (plan,) = balance([want("svc", 50, cfg=RUNC)], [node("a", ram=None)])
        assert len({id(slot) for slot in plan.slots}) == 1


# --- properties against a naive reference ---------------------------------------------------------


def reference(demands: list[Demand], nodes: list[NodeSpec]) -> dict[InstanceKey, str | None]:
    """The rules read literally: every instance scans every node (no current placement)."""
    big = 1 << 62
    cpu = {n.id: big if n.max_dmips is None else n.max_dmips for n in nodes}
    ram = {n.id: big if n.total_ram is None else n.total_ram for n in nodes}
    own = {}
    for n in nodes:
        for r in n.runtimes:
            own[n.id, r.id] = [
                r.allowed_dmips,
                r.allowed_ram,
                r.max_instances or big,
            ]
    slots = {(n.id, name): count or big for n in nodes for name, count in n.resources}
    out = {}
    for d in sorted(demands, key=lambda d: (-d.priority, d.item, d.subject)):
        types = d.config.runtime_types if d.config else DEFAULT_RUNTIMES
        names = shared_resources(d.config)
        for index in range(d.count):
            best = None
            for n in nodes:
                if not n.usable or not d.labels <= n.labels:
                    continue
                if any(slots.get((n.id, name), 0) <= 0 for name in names):
                    continue
                c, r = requested_cpu(d.config, n.cpu_ratio), requested_ram(d.config, n.ram_ratio)
                for spec in sorted(n.runtimes, key=lambda s: (s.type, s.id)):
                    if spec.type not in types:
                        continue
                    if d.platform is not None and not spec.platform.runs(d.platform):
                        continue
                    pool = own[n.id, spec.id]
                    free_cpu = cpu[n.id] if pool[0] is None else pool[0]
                    free_ram = ram[n.id] if pool[1] is None else pool[1]
                    if pool[2] > 0 and free_cpu >= c and free_ram >= r:
                        rank = (-n.priority, -cpu[n.id], -ram[n.id], n.id)
                        if best is None or rank < best[0]:
                            best = (rank, n, spec, c, r)
                        break
            k = InstanceKey(d.item, d.subject, index)
            if best is None:
                out[k] = None
                continue
            _, n, spec, c, r = best
            pool = own[n.id, spec.id]
            if pool[0] is None:
                cpu[n.id] -= c
            else:
                pool[0] -= c
            if pool[1] is None:
                ram[n.id] -= r
            else:
                pool[1] -= r
            pool[2] -= 1
            for name in names:
                slots[n.id, name] -= 1
            out[k] = f"{n.id}/{spec.id}"
    return out


LABELS = ("gpu", "cam")
node_specs = st.lists(
    st.builds(
        NodeSpec,
        st.sampled_from([f"n{i}" for i in range(6)]),
        connected=st.sampled_from([True, True, True, False]),
        state=st.sampled_from(["provisioned"] * 4 + ["paused", "error"]),
        priority=st.integers(0, 2),
        labels=st.frozensets(st.sampled_from(LABELS)),
        max_dmips=st.sampled_from([None, 300, 1000]),
        total_ram=st.sampled_from([None, 300, 1000]),
        cpu_ratio=st.sampled_from([None, 30, 100, 150]),
        runtimes=st.lists(
            st.builds(
                RuntimeSpec,
                st.sampled_from(["r1", "r2", "r3"]),
                st.sampled_from(["runc", "crun", "docker"]),
                platform=st.sampled_from([Platform(), Platform("linux", "amd64")]),
                allowed_dmips=st.sampled_from([None, None, 200]),
                allowed_ram=st.sampled_from([None, None, 200]),
                max_instances=st.integers(0, 3),
            ),
            max_size=3,
            unique_by=lambda r: r.id,
        ).map(tuple),
        resources=st.sampled_from([(), (("cam", 2),), (("cam", 0),)]),
    ),
    max_size=6,
    unique_by=lambda n: n.id,
)
configs = st.one_of(
    st.none(),
    st.builds(
        config,
        st.sampled_from(["runc", "crun", "docker"]),
        cpu=st.sampled_from([None, 100, 250]),
        ram=st.sampled_from([None, 100, 250]),
        ask_cpu=st.sampled_from([None, 50, 400]),
        res=st.sampled_from([(), ("cam",)]),
    ),
)
demand_lists = st.lists(
    st.builds(
        Demand,
        st.sampled_from(["a", "b", "c", "d"]),
        st.sampled_from(["s", "t"]),
        st.integers(0, 5),
        st.integers(0, 2),
        st.frozensets(st.sampled_from(LABELS), max_size=1),
        configs,
        st.sampled_from([None, Platform("linux", "x86_64")]),
    ),
    max_size=6,
    unique_by=lambda d: (d.item, d.subject),
)
PROPS = settings(max_examples=150, deadline=None)


def flat(plans: list[GroupPlan]) -> dict[InstanceKey, Slot]:
    return {k: slot for plan in plans for k, slot in plan}


class TestProperties:
    @PROPS
    @given(demand_lists, node_specs)
    def test_same_as_the_rules_read_literally(self, demands, nodes) -> None:
        got = {
            k: None if s.node is None else f"{s.node}/{s.runtime}"
            for k, s in flat(balance(demands, nodes)).items()
        }
        assert got == reference(demands, nodes)

    @PROPS
    @given(demand_lists, node_specs, st.randoms(use_true_random=False))
    def test_order_of_inputs_does_not_matter(self, demands, nodes, rnd) -> None:
        first = balance(demands, nodes)
        demands, nodes = list(demands), list(nodes)
        rnd.shuffle(demands)
        rnd.shuffle(nodes)
        assert balance(demands, nodes) == first

    @PROPS
    @given(demand_lists, node_specs)
    def test_placing_again_from_the_result_moves_nothing(self, demands, nodes) -> None:
        first = flat(balance(demands, nodes))
        current = {k: s.node for k, s in first.items() if s.node is not None}
        again = flat(balance(demands, nodes, current))
        # A refusal's reason may name another limit: what stays is booked before it is tried.
        assert {k: (s.node, s.runtime, s.code) for k, s in again.items()} == {
            k: (s.node, s.runtime, s.code) for k, s in first.items()
        }

    @PROPS
    @given(demand_lists, node_specs, st.data())
    def test_with_any_current_placement_no_pool_is_overbooked(self, demands, nodes, data) -> None:
        keys = [InstanceKey(d.item, d.subject, i) for d in demands for i in range(d.count + 1)]
        names = [n.id for n in nodes] + ["gone"]
        current = data.draw(
            st.dictionaries(st.sampled_from(keys or [key("x/0")]), st.sampled_from(names))
        )
        result = flat(balance(demands, nodes, current))
        by_id = {n.id: n for n in nodes}
        wanted = {InstanceKey(d.item, d.subject, i): d for d in demands for i in range(d.count)}
        used: dict[tuple, int] = {}
        for k, slot in result.items():
            if slot.node is None:
                assert slot.reason and slot.code in (AosCode.NOT_FOUND, AosCode.NO_MEMORY)
                continue
            n, d = by_id[slot.node], wanted[k]
            assert n.usable and d.labels <= n.labels
            spec = next(r for r in n.runtimes if r.id == slot.runtime)
            cpu_pool = ("cpu", n.id) if spec.allowed_dmips is None else ("cpu", n.id, spec.id)
            ram_pool = ("ram", n.id) if spec.allowed_ram is None else ("ram", n.id, spec.id)
            used[cpu_pool] = used.get(cpu_pool, 0) + requested_cpu(d.config, n.cpu_ratio)
            used[ram_pool] = used.get(ram_pool, 0) + requested_ram(d.config, n.ram_ratio)
            used["count", n.id, spec.id] = used.get(("count", n.id, spec.id), 0) + 1
            for name in shared_resources(d.config):
                used["slot", n.id, name] = used.get(("slot", n.id, name), 0) + 1
        for pool, amount in used.items():
            kind, node_id = pool[0], pool[1]
            n = by_id[node_id]
            if kind == "cpu":
                limit = n.max_dmips if len(pool) == 2 else _runtime(n, pool[2]).allowed_dmips
            elif kind == "ram":
                limit = n.total_ram if len(pool) == 2 else _runtime(n, pool[2]).allowed_ram
            elif kind == "count":
                limit = _runtime(n, pool[2]).max_instances or None
            else:
                limit = dict(n.resources)[pool[2]] or None
            assert limit is None or amount <= limit, (pool, amount, limit)


def _runtime(n: NodeSpec, runtime_id: str) -> RuntimeSpec:
    return next(r for r in n.runtimes if r.id == runtime_id)
