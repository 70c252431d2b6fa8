"""The placement dry run: protocol values in (shapes), a scenario in, `aoscore launcher plan`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from aoscore_py.cli import cli
from aoscore_py.cm.launcher.scenario import instances_json, plan, read_scenario
from aoscore_py.cm.launcher.shapes import (
    NodeSpec,
    Platform,
    RuntimeSpec,
    demands,
    describe_bytes,
    node_specs,
)
from aoscore_py.errors import ProtocolError
from aoscore_py.nodes import InstanceKey
from aoscore_py.protocol import (
    ArchInfo,
    CpuInfo,
    DesiredInstance,
    DesiredStatus,
    Identity,
    NodeConfig,
    NodeInfo,
    NodeState,
    OsInfo,
    ResourceInfo,
    ResourceRatios,
    RuntimeInfo,
    UnitConfig,
    parse_message,
)

FIXTURE = Path(__file__).parents[4] / "fixtures" / "placement" / "three-nodes.json"


def node_json(name: str, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "identity": {"codename": name},
        "state": "provisioned",
        "isConnected": True,
        "runtimes": [{"identity": {"codename": "docker"}, "runtimeType": "docker"}],
    }
    out.update(extra)
    return out


def scenario(**extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "nodes": [node_json("node-1"), node_json("node-2")],
        "desiredStatus": {
            "items": [
                {
                    "item": {"id": "svc", "type": "service"},
                    "version": "1.0.0",
                    "indexDigest": "sha256:abc",
                }
            ],
            "instances": [{"item": {"id": "svc"}, "subject": {"id": "s"}, "numInstances": 2}],
        },
    }
    out.update(extra)
    return out


def run(data: dict[str, Any]) -> list[dict[str, Any]]:
    return instances_json(plan(read_scenario(orjson.dumps(data))))["instances"]


class TestShapes:
    def test_node_specs_join_the_report_with_the_unit_config(self) -> None:
        info = NodeInfo(
            identity=Identity(codename="n1"),
            state=NodeState.PAUSED,
            is_connected=True,
            max_dmips=5000,
            total_ram=1 << 30,
            os_info=OsInfo("Linux"),
            cpus=(CpuInfo("a72", arch_info=ArchInfo("aarch64", "v8")),),
            runtimes=(
                RuntimeInfo(
                    Identity(codename="crun-1"), "crun", allowed_dmips=100, max_instances=3
                ),
                RuntimeInfo(Identity(codename="dk"), "docker", arch_info=ArchInfo("arm")),
            ),
            resources=(ResourceInfo("camera", 2),),
        )
        unit = UnitConfig(
            "1.0.0",
            "7",
            (
                NodeConfig(
                    Identity(codename="n1"),
                    resource_ratios=ResourceRatios(cpu=70),
                    labels=("gpu",),
                    priority=4,
                ),
            ),
        )
        (spec,) = node_specs([info], unit)
        assert spec == NodeSpec(
            id="n1",
            connected=True,
            state="paused",
            priority=4,
            labels=frozenset({"gpu"}),
            max_dmips=5000,
            total_ram=1 << 30,
            cpu_ratio=70,
            ram_ratio=None,
            runtimes=(
                RuntimeSpec("crun-1", "crun", Platform("Linux", "aarch64", "v8"), 100, None, 3),
                RuntimeSpec("dk", "docker", Platform("Linux", "arm", None)),
            ),
            resources=(("camera", 2),),
        )
        assert not spec.usable

    def test_a_node_without_unit_config_entry_has_defaults(self) -> None:
        info = NodeInfo(identity=Identity(codename="n"), state=NodeState.ERROR, is_connected=False)
        (spec,) = node_specs([info])
        assert (spec.priority, spec.labels, spec.runtimes, spec.condition) == (
            0,
            frozenset(),
            (),
            "disconnected",
        )

    def test_demands_carry_the_group_its_config_its_platform(self) -> None:
        desired = DesiredStatus(
            instances=(
                DesiredInstance(Identity(id="a"), Identity(id="s"), 3, 2, ("gpu",)),
                DesiredInstance(Identity(id="b"), Identity(id="t")),
            )
        )
        a, b = demands(desired, {"a": None}, {"a": Platform("linux")})  # type: ignore[dict-item]
        assert (a.item, a.subject, a.count, a.priority, a.labels) == ("a", "s", 2, 3, {"gpu"})
        assert a.platform == Platform("linux")
        assert (b.count, b.config, b.platform) == (0, None, None)

    @pytest.mark.parametrize(
        ("runtime", "image", "runs"),
        [
            (Platform("linux", "x86_64"), Platform("linux", "amd64"), True),
            (Platform("linux", "aarch64", "v8"), Platform("linux", "arm64", "V8"), True),
            (Platform("linux", "arm64", "v8"), Platform("linux", "arm64", "v7"), False),
            (Platform("Linux", "arm"), Platform("linux", "armv7l"), True),
            (Platform("windows", "amd64"), Platform("linux", "amd64"), False),
            (Platform(), Platform("linux", "riscv64"), True),
            (Platform("linux", "amd64"), Platform(), True),
        ],
    )
    def test_platforms(self, runtime: Platform, image: Platform, runs: bool) -> None:
        assert runtime.runs(image) is runs

    def test_sizes_in_refusals(self) -> None:
        assert describe_bytes(300) == "300 bytes"
        assert describe_bytes(512 << 20) == "512 MiB"
        assert describe_bytes(3 << 19) == "1.5 MiB"


class TestPlan:
    def test_placed_instances_are_activating_with_node_and_runtime(self) -> None:
        (group,) = run(scenario())
        assert group["item"] == {"id": "svc"}
        assert group["subject"] == {"id": "s"}
        assert group["version"] == "1.0.0"
        assert group["instances"] == [
            {
                "node": {"codename": "node-1"},
                "runtime": {"codename": "docker"},
                "instance": 0,
                "state": "activating",
            },
            {
                "node": {"codename": "node-1"},
                "runtime": {"codename": "docker"},
                "instance": 1,
                "state": "activating",
            },
        ]
        # Nothing requested, nothing limited: both nodes stay equal, the node id decides.

    def test_the_output_reads_back_as_a_unit_status(self) -> None:
        out = instances_json(plan(read_scenario(FIXTURE.read_bytes())))
        status = parse_message({"messageType": "unitStatus", **out})
        assert status.instances is not None
        assert len(status.instances) == 3

    def test_refused_instances_are_failed_with_error_info(self) -> None:
        data = scenario()
        data["desiredStatus"]["instances"][0]["labels"] = ["gpu"]
        (group,) = run(data)
        first = group["instances"][0]
        assert first["state"] == "failed"
        assert first["node"] == {"codename": ""}
        assert first["errorInfo"] == {
            "aosCode": 5,
            "exitCode": 0,
            "message": "no node with labels [gpu]",
        }

    def test_unit_config_item_configs_platforms_current_are_used(self) -> None:
        data = scenario(
            itemConfigs={"svc": {"quotas": {"ramLimit": 600 << 20}}},
            imagePlatforms={"svc": {"os": "linux", "architecture": "arm64"}},
            current=[
                {
                    "item": {"id": "svc"},
                    "subject": {"id": "s"},
                    "instance": 1,
                    "node": {"codename": "node-3"},
                }
            ],
        )
        data["nodes"] = [
            node_json("node-1", totalRam=1 << 30, osInfo={"os": "linux"}),
            node_json("node-2", totalRam=1 << 30),
            node_json(
                "node-3",
                cpus=[{"modelName": "x", "archInfo": {"architecture": "aarch64"}}],
            ),
        ]
        data["desiredStatus"]["unitConfig"] = {
            "version": "1",
            "formatVersion": "7",
            "nodes": [{"node": {"codename": "node-2"}, "priority": 5}],
        }
        (group,) = run(data)
        where = [i["node"]["codename"] for i in group["instances"]]
        assert where == ["node-2", "node-3"]

    def test_desired_node_states_apply_before_placing(self) -> None:
        data = scenario()
        data["nodes"][1]["state"] = "paused"
        data["desiredStatus"]["nodes"] = [
            {"item": {"codename": "node-1"}, "state": "paused"},
            {"item": {"codename": "node-2"}, "state": "provisioned"},
        ]
        (group,) = run(data)
        assert [i["node"]["codename"] for i in group["instances"]] == ["node-2", "node-2"]

    def test_an_error_node_stays_unusable_whatever_the_desired_state(self) -> None:
        data = scenario()
        data["nodes"] = [node_json("node-1", state="error")]
        data["desiredStatus"]["nodes"] = [{"item": {"codename": "node-1"}, "state": "provisioned"}]
        (group,) = run(data)
        assert "node-1: error" in group["instances"][0]["errorInfo"]["message"]

    def test_an_item_missing_from_items_has_an_empty_version(self) -> None:
        data = scenario()
        del data["desiredStatus"]["items"]
        (group,) = run(data)
        assert group["version"] == ""

    def test_current_is_read(self) -> None:
        data = scenario(
            current=[
                {
                    "item": {"id": "svc"},
                    "subject": {"id": "s"},
                    "instance": 0,
                    "node": {"codename": "n"},
                }
            ]
        )
        assert read_scenario(orjson.dumps(data)).current == {InstanceKey("svc", "s", 0): "n"}


def _bad(path: tuple[Any, ...], value: Any, drop: bool = False) -> dict[str, Any]:
    data = copy.deepcopy(scenario(itemConfigs={"my svc": {}}, imagePlatforms={}, current=[]))
    target = data
    for part in path[:-1]:
        target = target[part]
    if drop:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD = [
    (_bad(("nodes",), None, drop=True), "$.nodes", "missing required field"),
    (_bad(("nodes",), {}), "$.nodes", "expected array"),
    (_bad(("nodes", 0, "state"), "on"), "$.nodes[0].state", "unknown value 'on'"),
    (_bad(("nodes", 1, "isConnected"), None, drop=True), "$.nodes[1].isConnected", "missing"),
    (_bad(("desiredStatus",), None, drop=True), "$.desiredStatus", "missing required field"),
    (
        _bad(("desiredStatus", "instances", 0, "numInstances"), -1),
        "$.desiredStatus.instances[0].numInstances",
        ">= 0",
    ),
    (
        _bad(("itemConfigs", "my svc"), {"quotas": {"ramLimit": "1G"}}),
        '$.itemConfigs["my svc"].quotas.ramLimit',
        "expected integer",
    ),
    (_bad(("itemConfigs",), []), "$.itemConfigs", "expected object"),
    (
        _bad(("imagePlatforms",), {"svc": {"os": 1}}),
        "$.imagePlatforms.svc.os",
        "expected string",
    ),
    (
        _bad(("current",), [{"item": {"id": "a"}, "subject": {}, "instance": 0, "node": {}}]),
        "$.current[0].subject.id",
        "missing required field",
    ),
    (
        _bad(
            ("current",),
            [
                {
                    "item": {"id": "a"},
                    "subject": {"id": "s"},
                    "instance": -2,
                    "node": {"codename": "n"},
                }
            ],
        ),
        "$.current[0].instance",
        ">= 0",
    ),
]


class TestBadInput:
    @pytest.mark.parametrize(("data", "path", "reason"), BAD)
    def test_the_error_names_the_json_path(self, data, path: str, reason: str) -> None:
        with pytest.raises(ProtocolError) as caught:
            read_scenario(orjson.dumps(data))
        assert caught.value.path == path
        assert reason in caught.value.reason

    def test_not_json(self) -> None:
        with pytest.raises(ProtocolError) as caught:
            read_scenario(b"{nope")
        assert caught.value.path == "$"


class TestCommand:
    def test_prints_the_instances_section(self, tmp_path: Path) -> None:
        path = tmp_path / "scenario.json"
        path.write_bytes(orjson.dumps(scenario()))
        result = CliRunner().invoke(cli, ["launcher", "plan", str(path)])
        assert result.exit_code == 0, result.output
        out = orjson.loads(result.stdout)
        assert list(out) == ["instances"]
        assert out["instances"][0]["instances"][0]["state"] == "activating"

    def test_the_fixture_plans(self) -> None:
        result = CliRunner().invoke(cli, ["launcher", "plan", str(FIXTURE)])
        assert result.exit_code == 0, result.output
        groups = {g["item"]["id"]: g["instances"] for g in orjson.loads(result.stdout)["instances"]}
        assert [i["node"]["codename"] for i in groups["web"]] == ["node-1", "node-2", "node-1"]
        assert groups["vision"][1]["errorInfo"]["message"] == "no free slot of resources [camera]"
        assert groups["trainer"][0]["errorInfo"]["message"] == (
            "not enough RAM: needs 512 MiB, most free 128 MiB on node-2"
        )

    def test_bad_input_exits_2_naming_the_path(self, tmp_path: Path) -> None:
        path = tmp_path / "scenario.json"
        path.write_bytes(orjson.dumps(_bad(("nodes", 0, "state"), "on")))
        result = CliRunner().invoke(cli, ["launcher", "plan", str(path)])
        assert result.exit_code == 2
        assert f"{path}: $.nodes[0].state: unknown value 'on'" in result.stderr
        assert result.stdout == ""

    def test_a_missing_file_is_a_usage_error(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(cli, ["launcher", "plan", str(tmp_path / "none.json")])
        assert result.exit_code == 2
