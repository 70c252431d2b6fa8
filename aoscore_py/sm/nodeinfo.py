"""The node as its `SMInfo` describes it to the CM: one runtime, `docker`, with its resources.

Pure: the process reads the engine's platform and RAM once and builds the message here, so the
CM's placement sees the figures an operator gave (`--max-dmips`, `--allowed-ram`...) or, for
RAM, what the engine reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..nodes import wire
from ..nodes.proto import sm_pb2
from ..protocol import ArchInfo, Identity, OsInfo, RuntimeInfo
from .types import Platform


@dataclass(frozen=True)
class NodeResources:
    """What the node offers, for SMInfo; None is "not given" (placement reads it as unlimited).

    Attributes:
        total_ram: the node's RAM in bytes (by default what its engine reports).
        allowed_ram: the part of it instances may book.
        max_dmips: the node's CPU in DMIPS.
        allowed_dmips: the part of it instances may book.
        max_instances: at most this many instances (None: no limit).
    """

    total_ram: int | None = None
    allowed_ram: int | None = None
    max_dmips: int | None = None
    allowed_dmips: int | None = None
    max_instances: int | None = None


def sm_info_message(
    node_id: str, platform: Platform, resources: NodeResources, os_version: str | None = None
) -> sm_pb2.SMOutgoingMessages:
    """The `SMInfo` of this node: one runtime, `docker`, on the engine's platform; no shared
    resources yet."""
    runtime = RuntimeInfo(
        identity=Identity(codename=wire.DOCKER_RUNTIME),
        runtime_type=wire.DOCKER_RUNTIME,
        arch_info=ArchInfo(platform.architecture, platform.variant or None),
        os_info=OsInfo(platform.os, os_version or None),
        max_dmips=resources.max_dmips,
        allowed_dmips=resources.allowed_dmips,
        total_ram=resources.total_ram,
        allowed_ram=resources.allowed_ram,
        max_instances=resources.max_instances,
    )
    return wire.sm_info(node_id, [runtime])
