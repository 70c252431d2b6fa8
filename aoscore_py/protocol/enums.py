"""Enumerations of AosCloud protocol v7, with values exactly as they appear on the wire.

They are `StrEnum`s so that a member compares equal to its wire string and can be written as is.
Parsing is case-sensitive, as in AosCore: `"Installed"` is not an `ItemState`.
"""

from __future__ import annotations

import enum


class ItemType(enum.StrEnum):
    """What an identity names: the `type` of an item, subject, node or runtime."""

    SERVICE = "service"
    COMPONENT = "component"
    LAYER = "layer"
    SUBJECT = "subject"
    OEM = "oem"
    SP = "sp"
    FLEET = "fleet"
    NODE = "node"
    NODE_SUBJECT = "node-subject"
    RUNTIME = "runtime"


class ItemState(enum.StrEnum):
    """Where an update item stands on the unit, as reported in unitStatus."""

    UNKNOWN = "unknown"
    DOWNLOADING = "downloading"
    PENDING = "pending"
    INSTALLING = "installing"
    INSTALLED = "installed"
    REMOVING = "removing"
    REMOVED = "removed"
    FAILED = "failed"


class InstanceState(enum.StrEnum):
    """The run state of one service instance."""

    ACTIVATING = "activating"
    ACTIVE = "active"
    INACTIVE = "inactive"
    FAILED = "failed"


class NodeState(enum.StrEnum):
    """The provisioning state of a node, as the unit reports it."""

    UNPROVISIONED = "unprovisioned"
    PROVISIONED = "provisioned"
    PAUSED = "paused"
    ERROR = "error"


class DesiredNodeState(enum.StrEnum):
    """The state the cloud wants a node in: the cloud can only ask for these two."""

    PROVISIONED = "provisioned"
    PAUSED = "paused"


class UnitConfigState(enum.StrEnum):
    """Whether a unit configuration version is applied."""

    ABSENT = "absent"
    INSTALLED = "installed"
    FAILED = "failed"


class SubjectType(enum.StrEnum):
    """Whether a desired subject is a group of users or a single user."""

    GROUP = "group"
    USER = "user"
