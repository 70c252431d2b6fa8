"""A unit offline for a long time: statuses every second, the outbox bound respected, the
latest state never lost, memory flat. Real SQLite store and a real (never connected) cloud link;
the unit's records are stubs beside the test, changing every simulated second.

The clock is the loop: each simulated second makes one change and asks the status handler for
its delta, as its debouncer would once per change. CI runs an hour offline, and memory over 40
minutes; the day (86,400 statuses) is marked slow.
"""

from __future__ import annotations

import asyncio
import gc
import time
import tracemalloc
from pathlib import Path

import orjson
import pytest

from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.cm.communication.outbox import Outbox, OutboxLimits
from aoscore_py.cm.communication.targets import StaticTargets
from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.cm.updatemanager.unitstatus import UnitStatusHandler
from aoscore_py.nodes import InstanceKey
from aoscore_py.protocol import (
    Identity,
    InstanceState,
    ItemState,
    NodeInfo,
    NodeState,
    parse_frame,
)
from aoscore_py.storage import Storage

pytestmark = pytest.mark.integration

MAX_COUNT = 200
MAX_BYTES = 256 * 1024


class Records:
    """The unit's items and one instance whose state changes every second."""

    def __init__(self) -> None:
        self.second = 0

    def records(self) -> list:  # ItemSource and InstanceSource both read `records`
        raise NotImplementedError

    def items(self) -> list[ItemRecord]:
        state = ItemState.INSTALLED if self.second % 2 else ItemState.PENDING
        return [ItemRecord("svc", "1.0.0", "service", "sha256:" + "a" * 64, state)]

    def instances(self) -> list[InstanceRecord]:
        state = InstanceState.ACTIVE if self.second % 3 else InstanceState.ACTIVATING
        key = InstanceKey("svc", "subj", 0)
        return [InstanceRecord(key, "service", "1.0.0", "node-1", 0, state)]


class Items:
    def __init__(self, records: Records) -> None:
        self._r = records

    def records(self) -> list[ItemRecord]:
        return self._r.items()


class Instances:
    def __init__(self, records: Records) -> None:
        self._r = records

    def records(self) -> list[InstanceRecord]:
        return self._r.instances()

    async def refresh(self) -> list[InstanceRecord]:
        return self._r.instances()


class Node:
    async def node_info(self) -> NodeInfo:
        return NodeInfo(Identity(codename="node-1"), NodeState.PROVISIONED, True)


async def offline(
    tmp_path: Path, seconds: int, snapshot: list[int] | None = None
) -> tuple[Storage, CloudLink, int]:
    """Run `seconds` simulated seconds offline; the deepest the outbox got. With `snapshot`,
    the memory traced half-way through and at the end is appended to it."""
    storage = Storage(tmp_path)
    limits = OutboxLimits(max_count=MAX_COUNT, max_bytes=MAX_BYTES)
    outbox = Outbox(storage, time.monotonic, time.time, limits)

    async def ignore(*_args: object) -> None:
        return None

    link = CloudLink(
        StaticTargets("ws://127.0.0.1:1"), "u1", outbox, on_message=ignore, on_connect=ignore
    )
    records = Records()
    status = UnitStatusHandler(
        storage, storage, Items(records), Instances(records), {"node-1": Node()}, link
    )
    await status.send_full("link down at start")
    deepest = 0
    for second in range(1, seconds + 1):
        records.second = second
        await status.send_delta("a change")
        deepest = max(deepest, outbox.depth)
        if snapshot is not None and second in (seconds // 2, seconds):
            gc.collect()
            snapshot.append(tracemalloc.get_traced_memory()[0])
    return storage, link, deepest


def latest(storage: Storage) -> tuple[str, str]:
    """The item and instance state the newest queued status that holds them says."""
    item = instance = ""
    for entry in storage.outbox_entries():
        data = orjson.loads(entry.frame)["data"]
        if data.get("items"):
            item = data["items"][0]["state"]
        if data.get("instances"):
            instance = data["instances"][0]["instances"][0]["state"]
    return item, instance


async def check_offline(tmp_path: Path, seconds: int, *, memory: bool) -> None:
    """`memory`: also compare the memory traced half-way and at the end, both long past the
    first fold (tracemalloc, which slows the run several times over)."""
    snapshot: list[int] | None = [] if memory else None
    if memory:
        tracemalloc.start()
    try:
        storage, link, deepest = await offline(tmp_path, seconds, snapshot)
    finally:
        if memory:
            tracemalloc.stop()
    entries = storage.outbox_entries()
    assert deepest <= MAX_COUNT, "the count bound holds at every second"
    assert len(entries) == link.outbox.depth <= MAX_COUNT
    assert sum(len(e.frame) for e in entries) <= MAX_BYTES
    records = Records()
    records.second = seconds
    want = (records.items()[0].state.value, records.instances()[0].state.value)
    assert latest(storage) == want, "the newest state is in the outbox"
    folded = [orjson.loads(e.frame)["data"] for e in entries]
    fulls = [d for d in folded if not d["isDeltaInfo"] and d.get("foldedSeqs")]
    assert fulls, "queued statuses were folded into a full one, which says what it replaced"
    seqs = [parse_frame(e.frame).data.seq for e in entries]  # type: ignore[union-attr]
    assert seqs == sorted(seqs), "the outbox keeps the order they were made in"
    # Half the time and the whole of it leave the same memory behind (a bounded outbox):
    # within 256 KiB, where an unbounded one would hold each status made in the second half
    # (about 1 KiB each: over a megabyte here, tens of megabytes in a day).
    if snapshot:
        early, late = snapshot
        assert late - early < 256 << 10, (early, late)
    storage.close()


async def test_an_hour_offline_keeps_the_outbox_bounded_and_the_latest_state(
    tmp_path: Path,
) -> None:
    await check_offline(tmp_path, 3600, memory=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)
async def test_a_day_offline_keeps_the_outbox_bounded_and_the_latest_state(
    tmp_path: Path,
) -> None:
    await check_offline(tmp_path, 86_400, memory=True)


async def test_memory_stays_flat_offline(tmp_path: Path) -> None:
    await check_offline(tmp_path, 2400, memory=True)


def test_the_stubs_change_every_second() -> None:
    """The premise: consecutive seconds differ, so every second makes a delta."""
    a, b = Records(), Records()
    a.second, b.second = 1, 2
    assert (a.items(), a.instances()) != (b.items(), b.instances())
    asyncio.run(Node().node_info())
