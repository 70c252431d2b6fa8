"""An item config's quotas as Docker limits: AosCore's CPU rule, the default DMIPS per core,
and a config that does not read naming its blob and JSON path."""

from __future__ import annotations

import pytest

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.nodes.itemconfig import ItemConfig, Quotas
from aoscore_py.sm.quotas import (
    DEFAULT_DMIPS_PER_CORE,
    MIN_NANO_CPUS,
    container_limits,
    nano_cpus,
    read_item_config,
)
from aoscore_py.sm.types import ContainerLimits

ITEM_CONFIG = "sha256:" + "f" * 64


class TestCpu:
    @pytest.mark.parametrize(
        ("limit", "max_dmips", "cpus", "expected"),
        [
            (5_000, 10_000, 4, 2_000_000_000),  # half the node: two of its four CPUs
            (10_000, 10_000, 4, 4_000_000_000),  # the whole node
            (1_000, 8_000, 2, 250_000_000),
            (1, 10_000, 1, MIN_NANO_CPUS),  # AosCore's floor: 1 % of a core
            (0, 10_000, 1, MIN_NANO_CPUS),
            (50_000, 10_000, 2, 2_000_000_000),  # more than the node: every CPU, no more
        ],
    )
    def test_aoscore_rule_with_the_nodes_max_dmips(
        self, limit: int, max_dmips: int, cpus: int, expected: int
    ) -> None:
        assert nano_cpus(limit, max_dmips, cpus) == expected

    @pytest.mark.parametrize(
        ("limit", "cpus", "expected"),
        [
            (DEFAULT_DMIPS_PER_CORE, 8, 1_000_000_000),  # one core's worth, however many
            (DEFAULT_DMIPS_PER_CORE // 4, 8, 250_000_000),
            (3 * DEFAULT_DMIPS_PER_CORE, 2, 2_000_000_000),  # capped at the host
        ],
    )
    def test_without_max_dmips_each_cpu_counts_the_default(
        self, limit: int, cpus: int, expected: int
    ) -> None:
        assert nano_cpus(limit, None, cpus) == expected
        assert nano_cpus(limit, 0, cpus) == expected  # 0 on the wire is "not given"

    def test_integer_arithmetic(self) -> None:
        assert nano_cpus(1, 3, 1) == 333_333_333


class TestLimits:
    def test_no_item_config_no_limits(self) -> None:
        assert container_limits(None, 10_000, 4) == ContainerLimits()
        assert container_limits(ItemConfig(), 10_000, 4) == ContainerLimits()

    def test_each_quota_maps_to_its_limit(self) -> None:
        config = ItemConfig(
            quotas=Quotas(cpu_dmips_limit=2_500, ram_limit=64 << 20, pids_limit=50, tmp_limit=1)
        )
        assert container_limits(config, 10_000, 4) == ContainerLimits(
            memory=64 << 20, pids=50, nano_cpus=1_000_000_000
        )

    def test_skip_resource_limits_spares_placement_only(self) -> None:
        config = ItemConfig(quotas=Quotas(ram_limit=1 << 30), skip_resource_limits=True)
        assert container_limits(config, None, 1).memory == 1 << 30


class TestReading:
    def test_a_valid_config(self) -> None:
        config = read_item_config(b'{"quotas": {"ramLimit": 1024, "pidsLimit": 3}}', ITEM_CONFIG)
        assert (config.quotas.ram_limit, config.quotas.pids_limit) == (1024, 3)

    @pytest.mark.parametrize(
        ("raw", "path"),
        [
            (b'{"quotas": {"ramLimit": -1}}', "$.quotas.ramLimit"),
            (b'{"runParameters": {"startBurst": "many"}}', "$.runParameters.startBurst"),
            (b"{not json", "$"),
        ],
    )
    def test_a_config_that_does_not_read_names_blob_and_path(self, raw: bytes, path: str) -> None:
        with pytest.raises(ProtocolError) as caught:
            read_item_config(raw, ITEM_CONFIG)
        assert caught.value.code == AosCode.INVALID_ARGUMENT
        assert caught.value.message.startswith(f"aosItemConfig {ITEM_CONFIG}: {path}")
