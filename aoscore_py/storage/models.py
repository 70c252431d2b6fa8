"""The agent's tables. Each is written by one component (ARCHITECTURE.md, principle 2).

Models are declared here without a database; `bind(db)` makes per-database copies so two
stores in one process never share a binding.
"""

from __future__ import annotations

import peewee


class _Base(peewee.Model):
    pass


class Meta(_Base):
    """Key/value facts about the store itself (schema version, sequence reservations)."""

    key = peewee.TextField(primary_key=True)
    value = peewee.TextField()

    class Meta:
        table_name = "meta"


class DesiredStatusRow(_Base):
    """The desired status being applied (one row, id 1), written by the update manager."""

    id = peewee.IntegerField(primary_key=True)
    body = peewee.BlobField()
    received_at = peewee.FloatField()

    class Meta:
        table_name = "desired_status"


class ItemRow(_Base):
    """An item version known to the unit, written by the image manager."""

    item_id = peewee.TextField()
    version = peewee.TextField()
    item_type = peewee.TextField()
    index_digest = peewee.TextField()
    state = peewee.TextField()
    error = peewee.BlobField(null=True)
    updated_at = peewee.FloatField()

    class Meta:
        table_name = "item"
        primary_key = peewee.CompositeKey("item_id", "version")


class BlobRow(_Base):
    """A blob stored and verified, written by the image manager."""

    digest = peewee.TextField(primary_key=True)
    size = peewee.IntegerField()
    verified_at = peewee.FloatField()
    mtime_ns = peewee.IntegerField(default=0)

    class Meta:
        table_name = "blob"


class InstanceRow(_Base):
    """Where an instance is placed and what its node answered, written by the launcher."""

    item_id = peewee.TextField()
    subject_id = peewee.TextField()
    instance = peewee.IntegerField()
    item_type = peewee.TextField()
    version = peewee.TextField()
    node = peewee.TextField()
    priority = peewee.IntegerField(default=0)
    state = peewee.TextField()
    error = peewee.BlobField(null=True)
    updated_at = peewee.FloatField()

    class Meta:
        table_name = "instance"
        primary_key = peewee.CompositeKey("item_id", "subject_id", "instance")


class UnitConfigRow(_Base):
    """The unit configuration installed (id 1), and the last one refused (id 2)."""

    id = peewee.IntegerField(primary_key=True)
    version = peewee.TextField()
    state = peewee.TextField()
    body = peewee.BlobField(null=True)
    error = peewee.BlobField(null=True)

    class Meta:
        table_name = "unit_config"


class NodeRow(_Base):
    """A node's desired state (provisioned or paused), written by the update manager."""

    node = peewee.TextField(primary_key=True)
    state = peewee.TextField()

    class Meta:
        table_name = "node"


class OutboxRow(_Base):
    """A message to the cloud waiting for its ack, written by the cloud link (id: the order)."""

    id = peewee.AutoField()
    txn = peewee.TextField(unique=True)
    message_type = peewee.TextField()
    frame = peewee.BlobField()
    created_at = peewee.FloatField()
    seq = peewee.IntegerField(null=True)

    class Meta:
        table_name = "outbox"


class LinkHealthRow(_Base):
    """A change of the cloud link's health (the last ones), written by the cloud link."""

    id = peewee.AutoField()
    at = peewee.FloatField()
    health = peewee.TextField()
    reason = peewee.TextField()

    class Meta:
        table_name = "link_health"


ALL = (
    Meta,
    DesiredStatusRow,
    ItemRow,
    BlobRow,
    InstanceRow,
    UnitConfigRow,
    NodeRow,
    OutboxRow,
    LinkHealthRow,
)


def bind(db: peewee.Database) -> dict[str, type[peewee.Model]]:
    """Copies of every model bound to `db`, by class name."""
    bound: dict[str, type[peewee.Model]] = {}
    for model in ALL:
        meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
        bound[model.__name__] = type(model.__name__, (model,), {"Meta": meta})
    return bound
