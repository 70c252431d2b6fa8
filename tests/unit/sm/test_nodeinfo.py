"""The SMInfo the node opens each stream with."""

from __future__ import annotations

from aoscore_py.nodes import wire
from aoscore_py.sm.nodeinfo import NodeResources, sm_info_message
from aoscore_py.sm.types import Platform

from .node_stubs import NODE


class TestSmInfo:
    def test_one_docker_runtime_with_the_nodes_platform_and_resources(self) -> None:
        resources = NodeResources(8 << 30, 6 << 30, 10_000, 8_000, 20)
        message = sm_info_message(NODE, Platform("linux", "arm", "v7"), resources, "6.1.0")
        info = wire.node_runtimes(message.sm_info)
        assert info.node_id == NODE and info.resources == ()
        [runtime] = info.runtimes
        assert (runtime.identity.key, runtime.runtime_type) == ("docker", "docker")
        assert runtime.arch_info is not None and runtime.os_info is not None
        assert (runtime.arch_info.architecture, runtime.arch_info.variant) == ("arm", "v7")
        assert (runtime.os_info.os, runtime.os_info.version) == ("linux", "6.1.0")
        assert (runtime.total_ram, runtime.allowed_ram) == (8 << 30, 6 << 30)
        assert (runtime.max_dmips, runtime.allowed_dmips, runtime.max_instances) == (
            10_000,
            8_000,
            20,
        )

    def test_what_is_not_known_is_not_sent(self) -> None:
        message = sm_info_message(NODE, Platform("linux", "amd64"), NodeResources())
        runtime = message.sm_info.runtimes[0]
        assert (runtime.total_ram, runtime.max_dmips, runtime.max_instances) == (0, 0, 0)
        assert runtime.arch_info.variant == ""
