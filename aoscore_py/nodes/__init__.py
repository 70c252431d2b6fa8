"""The CM<->SM contract: the types both sides share, and nothing else.

`cm/` and `sm/` never import each other; both import this package. The next step puts the same
calls on the wire (AosCore's `servicemanager.v5`), so these types are what that link carries.
"""

from .contract import (
    ImageLayout,
    InstanceKey,
    InstanceSpec,
    InstanceStatus,
    ServiceManager,
    expand_instances,
)

__all__ = [
    "ImageLayout",
    "InstanceKey",
    "InstanceSpec",
    "InstanceStatus",
    "ServiceManager",
    "expand_instances",
]
