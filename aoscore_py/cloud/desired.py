"""Desired statuses an operator asks for in a line: items by index digest, instances, labels.

`aoscore cloud desired --item web=sha256:...:2 --item worker=sha256:... > ds.json` writes one, so
nobody writes the v7 JSON by hand. Each item becomes a service of that version with its group of
instances for one subject; the nodes named are provisioned (or paused).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..protocol import (
    DesiredInstance,
    DesiredItem,
    DesiredNodeState,
    DesiredNodeStatus,
    DesiredStatus,
    DesiredSubject,
    Identity,
    SubjectType,
)
from ..protocol.rules import check_digest


@dataclass(frozen=True)
class WantedItem:
    """One item: its id, index digest, how many instances."""

    item_id: str
    digest: str
    instances: int = 1


def parse_item(text: str) -> WantedItem:
    """`ID=ALG:HEX[:INSTANCES]`, e.g. `web=sha256:<64 hex>:2`.

    Raises:
        ValueError: the reason, naming the value.
    """
    item_id, eq, rest = text.partition("=")
    if not eq or not item_id or not rest:
        raise ValueError(f"{text!r}: expected ID=DIGEST[:INSTANCES]")
    parts = rest.split(":")
    instances = 1
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise ValueError(f"{text!r}: instances {parts[2]!r} is not a number")
        instances = int(parts[2])
        parts = parts[:2]
    if len(parts) != 2:
        raise ValueError(f"{text!r}: expected ID=DIGEST[:INSTANCES]")
    digest = check_digest(":".join(parts))
    return WantedItem(item_id, digest, instances)


def build_desired(
    items: Sequence[WantedItem],
    *,
    version: str = "1.0.0",
    subject: str = "subj1",
    nodes: Sequence[str] = (),
    paused: Sequence[str] = (),
    labels: Mapping[str, Sequence[str]] | None = None,
) -> DesiredStatus:
    """A desired status running `items` for `subject`, on `nodes` (`paused` ones paused)."""
    labels = labels or {}
    return DesiredStatus(
        nodes=tuple(
            DesiredNodeStatus(
                Identity(codename=n),
                DesiredNodeState.PAUSED if n in paused else DesiredNodeState.PROVISIONED,
            )
            for n in dict.fromkeys([*nodes, *paused])
        ),
        items=tuple(
            DesiredItem(Identity(id=i.item_id, type="service"), version, i.digest) for i in items
        ),
        instances=tuple(
            DesiredInstance(
                Identity(id=i.item_id),
                Identity(id=subject),
                0,
                i.instances,
                tuple(labels.get(i.item_id, ())),
            )
            for i in items
        ),
        subjects=(DesiredSubject(Identity(id=subject), SubjectType.GROUP),),
    )
