"""The item config: read as AosCore reads it, the requested resources as AosCore computes them."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.nodes.itemconfig import (
    DEFAULT_RUNTIMES,
    BalancingPolicy,
    ItemConfig,
    Quotas,
    RequestedResources,
    ResourceRequest,
    RunParameters,
    item_config_json,
    parse_item_config,
    requested,
    requested_cpu,
    requested_ram,
    shared_resources,
)

# aos_core_cpp `src/common/ocispec/tests/ocispec.cpp`, cItemConfig (the parts that are JSON).
AOS_ITEM_CONFIG = b"""
{
    "created": "2024-12-31T23:59:59Z",
    "author": "Aos cloud",
    "architecture": "x86",
    "balancingPolicy": "disabled",
    "hostname": "test-hostname",
    "runtimes": [{"codename": "crun"}, {"codename": "runc"}],
    "runParameters": {"startInterval": "PT1M", "startBurst": 0, "restartInterval": "PT5M"},
    "offlineTTL": "P1DT3H",
    "quotas": {
        "cpuLimit": 100, "ramLimit": 200, "storageLimit": 300, "stateLimit": 400,
        "tmpLimit": 500, "uploadSpeed": 600, "downloadSpeed": 700, "noFileLimit": 800,
        "pidsLimit": 900
    },
    "alertRules": {"ram": {"minTimeout": "PT1M", "minThreshold": 10, "maxThreshold": 20}},
    "sysctl": {"key1": "value1"},
    "config": {"Entrypoint": ["python3"], "Cmd": ["-u", "main.py"], "WorkingDir": "/"},
    "allowedConnections": {"9931560c-be75-4f60-9abf-08297d905332/8087-8088/tcp": {}},
    "resources": [
        {"name": "resource1", "mode": "rw"},
        {"name": "resource2", "mode": "ro"},
        {"name": "resource3", "mode": ""}
    ],
    "permissions": {"vis": {"Attribute.Body.Vehicle.VIN": "r"}}
}
"""


class TestReading:
    def test_aoscores_own_test_config(self) -> None:
        config = parse_item_config(AOS_ITEM_CONFIG)
        assert config == ItemConfig(
            runtimes=("crun", "runc"),
            # AosCore reads cpuDMIPSLimit, not its test's "cpuLimit": neither do we.
            quotas=Quotas(
                ram_limit=200,
                pids_limit=900,
                no_file_limit=800,
                tmp_limit=500,
                state_limit=400,
                storage_limit=300,
                upload_speed=600,
                download_speed=700,
            ),
            resources=(
                ResourceRequest("resource1", "rw"),
                ResourceRequest("resource2", "ro"),
                ResourceRequest("resource3", ""),
            ),
            run_parameters=RunParameters(60.0, 0, 300.0),
            balancing_policy=BalancingPolicy.DISABLED,
            author="Aos cloud",
            hostname="test-hostname",
        )

    def test_keys_match_ignoring_case(self) -> None:
        one = parse_item_config(
            b'{"quotas": {"cpuDMIPSLimit": 5}, "RequestedResources": {"RAM": 7}}'
        )
        two = parse_item_config(
            b'{"quotas": {"cpuDmipsLimit": 5}, "requestedResources": {"ram": 7}}'
        )
        assert one == two
        assert one.quotas.cpu_dmips_limit == 5
        assert one.requested_resources == RequestedResources(ram=7)

    def test_everything_is_optional(self) -> None:
        config = parse_item_config(b"{}")
        assert config == ItemConfig()
        assert config.requested_resources is None
        assert config.runtime_types == DEFAULT_RUNTIMES == ("crun", "docker", "runc")

    def test_runtimes_resources_may_be_bare_strings(self) -> None:
        config = parse_item_config({"runtimes": ["docker"], "resources": ["camera"]})
        assert config.runtimes == ("docker",)
        assert config.resources == (ResourceRequest("camera"),)
        assert config.runtime_types == ("docker",)

    def test_nulls_read_as_missing(self) -> None:
        config = parse_item_config({"quotas": {"ramLimit": None}, "requestedResources": None})
        assert config.quotas == Quotas()
        assert config.requested_resources is None

    def test_policy_ignores_case(self) -> None:
        assert parse_item_config({"balancingPolicy": "Disabled"}).balancing_policy == "disabled"

    def test_skip_resource_limits(self) -> None:
        assert parse_item_config({"skipResourceLimits": True}).skip_resource_limits


BAD = [
    (b"[1]", "$", "expected object, got array"),
    (b"{", "$", "not valid JSON"),
    (b'{"quotas": []}', "$.quotas", "expected object"),
    (b'{"quotas": {"ramLimit": -1}}', "$.quotas.ramLimit", "expected an integer >= 0, got -1"),
    (b'{"quotas": {"cpuDmipsLimit": 1.5}}', "$.quotas.cpuDmipsLimit", "expected integer"),
    (b'{"quotas": {"pidsLimit": "10"}}', "$.quotas.pidsLimit", "expected integer, got string"),
    (b'{"requestedResources": {"cpu": true}}', "$.requestedResources.cpu", "expected integer"),
    (b'{"runtimes": "crun"}', "$.runtimes", "expected array"),
    (b'{"runtimes": [{"name": "crun"}]}', "$.runtimes[0].codename", "missing required field"),
    (b'{"runtimes": [""]}', "$.runtimes[0]", "empty runtime type"),
    (b'{"resources": [{"mode": "rw"}]}', "$.resources[0].name", "missing required field"),
    (b'{"resources": [7]}', "$.resources[0]", "expected object"),
    (b'{"runParameters": {"startInterval": "soon"}}', "$.runParameters.startInterval", "ISO"),
    (b'{"runParameters": {"startBurst": -1}}', "$.runParameters.startBurst", ">= 0"),
    (b'{"balancingPolicy": "sometimes"}', "$.balancingPolicy", "unknown balancing policy"),
    (b'{"skipResourceLimits": "yes"}', "$.skipResourceLimits", "expected boolean"),
    (b'{"hostname": 3}', "$.hostname", "expected string"),
]


@pytest.mark.parametrize(("raw", "path", "reason"), BAD)
def test_refusals_name_the_json_path(raw: bytes, path: str, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_item_config(raw)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert caught.value.code == AosCode.INVALID_ARGUMENT
    assert str(caught.value).startswith(f"{path}: ")


def test_the_path_starts_where_the_caller_says() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_item_config({"quotas": {"ramLimit": -1}}, path='$.itemConfigs["a b"]')
    assert caught.value.path == '$.itemConfigs["a b"].quotas.ramLimit'


def test_an_oversized_config_is_refused() -> None:
    with pytest.raises(ProtocolError, match="too large"):
        parse_item_config(b'{"author": "' + b"x" * (1 << 20) + b'"}')


# --- requested resources: AosCore's ServiceInstance::GetRequestedCPU/RAM --------------------------

REQUESTED = [
    # asked, quota, node ratio -> booked
    (300, 500, None, 300),  # asked, under the quota
    (800, 500, None, 500),  # asked, clamped to the quota
    (800, None, 10, 800),  # asked, no quota: as asked, the ratio is not used
    (None, 500, None, 250),  # quota x the default 50 %
    (None, 500, 20, 100),  # quota x the node's ratio
    (None, 500, 150, 500),  # a ratio over 100 % is capped
    (None, 500, -5, 0),  # a negative ratio books nothing
    (None, 101, None, 51),  # 50.5 rounds half up
    (None, 3, 50, 2),  # 1.5 rounds half up
    (None, 5, 30, 2),  # 1.5 rounds half up
    (None, 7, 30, 2),  # 2.1 rounds down
    (None, None, 80, 0),  # nothing asked, no quota
    (0, 500, None, 0),  # asked for nothing
    (None, (1 << 62) + 1, None, (1 << 61) + 1),  # exact for large sizes: no float on the way
]


@pytest.mark.parametrize(("asked", "quota", "ratio", "booked"), REQUESTED)
def test_requested(asked, quota, ratio, booked) -> None:
    assert requested(asked, quota, ratio) == booked


class TestPerResource:
    config = ItemConfig(
        quotas=Quotas(cpu_dmips_limit=1000, ram_limit=64 << 20),
        requested_resources=RequestedResources(cpu=200),
        resources=(ResourceRequest("cam"), ResourceRequest("cam", "ro"), ResourceRequest("gpu")),
    )

    def test_fields_are_computed_one_by_one(self) -> None:
        assert requested_cpu(self.config, 30) == 200  # asked
        assert requested_ram(self.config, 30) == round((64 << 20) * 0.3)  # quota x ratio

    def test_no_config_books_nothing(self) -> None:
        assert (requested_cpu(None, 50), requested_ram(None, 50), shared_resources(None)) == (
            0,
            0,
            (),
        )

    def test_shared_resources_once_each_in_order(self) -> None:
        assert shared_resources(self.config) == ("cam", "gpu")

    def test_skip_resource_limits_books_nothing(self) -> None:
        skipped = ItemConfig(
            quotas=self.config.quotas,
            requested_resources=self.config.requested_resources,
            resources=self.config.resources,
            skip_resource_limits=True,
        )
        assert (requested_cpu(skipped, 50), requested_ram(skipped, 50)) == (0, 0)
        assert shared_resources(skipped) == ()


# --- writing --------------------------------------------------------------------------------------

sizes = st.one_of(st.none(), st.integers(0, 1 << 40))
names = st.text("abcxyz-", min_size=1, max_size=6)
configs = st.builds(
    ItemConfig,
    runtimes=st.lists(names, max_size=3).map(tuple),
    quotas=st.builds(Quotas, sizes, sizes, sizes, sizes, sizes, sizes, sizes),
    requested_resources=st.one_of(st.none(), st.builds(RequestedResources, sizes, sizes)),
    resources=st.lists(
        st.builds(ResourceRequest, names, st.sampled_from(["", "rw"])), max_size=2
    ).map(tuple),
    run_parameters=st.builds(
        RunParameters,
        st.one_of(st.none(), st.integers(0, 10_000).map(float)),
        st.one_of(st.none(), st.integers(0, 9)),
    ),
    balancing_policy=st.sampled_from(BalancingPolicy),
    skip_resource_limits=st.booleans(),
    author=names,
    hostname=st.one_of(st.none(), names),
)


@settings(max_examples=100, deadline=None)
@given(configs)
def test_what_is_written_reads_back_the_same(config: ItemConfig) -> None:
    assert parse_item_config(orjson.dumps(item_config_json(config))) == config


def test_written_in_aoscores_spelling_and_order() -> None:
    config = ItemConfig(
        runtimes=("crun",),
        quotas=Quotas(cpu_dmips_limit=100, ram_limit=200, pids_limit=10),
        requested_resources=RequestedResources(cpu=50),
        resources=(ResourceRequest("cam", "rw"),),
        run_parameters=RunParameters(restart_interval=5.0),
        author="me",
    )
    assert item_config_json(config) == {
        "author": "me",
        "skipResourceLimits": False,
        "balancingPolicy": "enabled",
        "runtimes": [{"codename": "crun"}],
        "runParameters": {"restartInterval": "PT5S"},
        "quotas": {"cpuDMIPSLimit": 100, "ramLimit": 200, "pidsLimit": 10},
        "requestedResources": {"cpu": 50},
        "resources": [{"name": "cam", "mode": "rw"}],
    }
    assert list(item_config_json(config)) == [
        "author",
        "skipResourceLimits",
        "balancingPolicy",
        "runtimes",
        "runParameters",
        "quotas",
        "requestedResources",
        "resources",
    ]
