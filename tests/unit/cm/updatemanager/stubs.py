"""Small working fakes of the desired status handler's collaborators, with memory.

Like AosCore's stubs in `updatemanager/tests/stubs/`: each keeps what it was asked, and the slow
ones (the image manager's download, the launcher's launch and wait) block on a gate until the
test opens it, so a test can hold the cycle inside a phase. `FakeClock` replaces the handler's
sleep, so minutes of retry backoff pass in microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.launcher.interfaces import InstanceRecord
from aoscore_py.cm.updatemanager.handler import DesiredStatusHandler
from aoscore_py.errors import AosError
from aoscore_py.protocol import (
    DesiredItem,
    DesiredStatus,
    ErrorInfo,
    ItemState,
    UnitConfig,
)


class Gate:
    """Where a stub's work waits: `entered` is set when the work starts, `opened` lets it go.

    A gate opened before the work starts lets it through at once.
    """

    def __init__(self, opened: bool = False) -> None:
        self.entered = asyncio.Event()
        self.opened = asyncio.Event()
        self.cancelled = 0
        if opened:
            self.opened.set()

    async def pass_through(self) -> None:
        self.entered.set()
        try:
            await self.opened.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


ItemOutcome = Callable[[DesiredItem], ErrorInfo | None]


class StubImages:
    """The image manager: `download` waits at its gate, then makes each item pending, or
    failed with the errorInfo `outcome` gives it."""

    def __init__(self, gate: Gate | None = None, outcome: ItemOutcome | None = None) -> None:
        self.gate = gate or Gate(opened=True)
        self.outcome = outcome or (lambda _item: None)
        self.downloads: list[DesiredStatus] = []
        self.skipped: list[tuple[str, ...]] = []
        self.finalized: list[tuple[tuple[str, str], ...]] = []
        self._records: dict[tuple[str, str], ItemRecord] = {}

    async def download(self, ds: DesiredStatus, skip: Collection[str] = ()) -> list[ItemRecord]:
        self.downloads.append(ds)
        self.skipped.append(tuple(skip))
        await self.gate.pass_through()
        out = []
        for item in ds.items:
            known = self._records.get((item.item.key or "", item.version))
            if item.item.key in skip and known and known.state == ItemState.FAILED:
                out.append(known)
                continue
            error = self.outcome(item)
            state = ItemState.FAILED if error else ItemState.PENDING
            record = ItemRecord(
                item.item.key or "", item.version, "service", item.index_digest, state, error
            )
            self._records[(record.item_id, record.version)] = record
            out.append(record)
        return out

    def records(self) -> list[ItemRecord]:
        return sorted(self._records.values(), key=lambda r: (r.item_id, r.version))

    def finalize(self, desired: Sequence[DesiredItem], running: set[tuple[str, str]]) -> None:
        wanted = tuple(sorted((i.item.key or "", i.version) for i in desired))
        self.finalized.append(wanted)
        for key in wanted:
            record = self._records.get(key)
            if record is not None and record.state == ItemState.PENDING:
                self._records[key] = ItemRecord(
                    record.item_id,
                    record.version,
                    record.item_type,
                    record.index_digest,
                    ItemState.INSTALLED,
                )


@dataclass
class StubLauncher:
    """The launcher: `launch` and `wait_active` each wait at their gate; `launch_error` makes
    launching raise (an expected AosError, or any exception)."""

    launch_gate: Gate = field(default_factory=lambda: Gate(opened=True))
    wait_gate: Gate = field(default_factory=lambda: Gate(opened=True))
    launch_error: BaseException | None = None
    launches: list[DesiredStatus] = field(default_factory=list)
    waits: int = 0
    late: list[tuple[str, str]] = field(default_factory=list)  # (item, version) never active
    _records: list[InstanceRecord] = field(default_factory=list)

    async def launch(
        self, desired: DesiredStatus, items: Sequence[ItemRecord], node_states: Mapping[str, str]
    ) -> list[InstanceRecord]:
        self.launches.append(desired)
        await self.launch_gate.pass_through()
        if self.launch_error is not None:
            raise self.launch_error
        return self._records

    async def wait_active(self, timeout_s: float) -> bool:
        self.waits += 1
        await self.wait_gate.pass_through()
        return not self.late

    def give_up_activating(self, timeout_s: float) -> list[tuple[str, str]]:
        late, self.late = self.late, []
        return late

    def records(self) -> list[InstanceRecord]:
        return list(self._records)

    async def refresh(self) -> list[InstanceRecord]:
        return list(self._records)


class RecordingStatus:
    """The unit status handler: remembers the desired status in force and every full status
    asked for; a test can wait for the next one."""

    def __init__(self) -> None:
        self.desired: list[DesiredStatus | None] = []
        self.reasons: list[str] = []
        self._sent = asyncio.Event()

    def use_desired(self, desired: DesiredStatus | None) -> None:
        self.desired.append(desired)

    async def send_full(self, reason: str) -> None:
        self.reasons.append(reason)
        self._sent.set()

    async def next_report(self, timeout_s: float = 5.0) -> str:
        self._sent.clear()
        await asyncio.wait_for(self._sent.wait(), timeout_s)
        return self.reasons[-1]


class FakeClock:
    """Time that moves only when the test says: the handler's `sleep` waits on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def sleep(self, delay: float) -> None:
        self.slept.append(delay)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._order), future))
        await future

    @property
    def waiting(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    async def advance(self, seconds: float, handler: DesiredStatusHandler) -> None:
        """Move time forward by `seconds`, waking each sleeper when its time comes and letting
        the handler finish what that starts before time moves on."""
        until = self.now + seconds
        await settle(handler)
        while self._sleepers and self._sleepers[0][0] <= until:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self.now = when
            future.set_result(None)
            await settle(handler)
        self.now = until


async def settle(handler: DesiredStatusHandler) -> None:
    """Let the loop run until the handler rests and whatever it scheduled has started."""
    for _ in range(1000):
        for _ in range(20):
            await asyncio.sleep(0)
        if handler.idle:
            return
        with contextlib.suppress(asyncio.CancelledError, AosError):
            await handler.runner.wait()
    raise AssertionError("the handler did not come to rest")


class StubNodes:
    """The unit's nodes: a fixed set; every node accepts its unit config entry unless
    `refusal` says otherwise; the configs applied and node lists set are kept."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.refusal: ErrorInfo | None = None
        self.applied: list[UnitConfig] = []
        self.unit_nodes: list[set[str]] = []

    def knows(self, node_id: str) -> bool:
        return node_id in self.names

    async def apply_unit_config(self, config: UnitConfig) -> ErrorInfo | None:
        self.applied.append(config)
        return self.refusal

    def set_unit_nodes(self, node_ids: Iterable[str]) -> None:
        self.unit_nodes.append(set(node_ids))
