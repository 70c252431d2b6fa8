"""A desired status handler over a real SQLite file and the stubs beside it, and the ways to put
its cycle in any phase: run it there (phases that wait on a stub), or seed the committed phase
and resume (phases that do no waiting of their own)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from aoscore_py.backoff import Backoff
from aoscore_py.cm.updatemanager.handler import MACHINE, DesiredStatusHandler, digest_of
from aoscore_py.protocol import (
    DesiredInstance,
    DesiredItem,
    DesiredNodeState,
    DesiredNodeStatus,
    DesiredStatus,
    DesiredSubject,
    Identity,
    SubjectType,
    dump_message,
)
from aoscore_py.storage import Storage
from statemachine import UPDATE_CYCLE, DurableMachine, JournalRecord

from .stubs import (
    FakeClock,
    Gate,
    RecordingStatus,
    StubImages,
    StubLauncher,
    StubNodes,
    settle,
)

# The events that take a fresh machine to each phase, with the desired status applied.
PATHS: dict[str, tuple[str, ...]] = {
    "none": (),
    "downloading": ("start",),
    "pending": ("start", "done"),
    "installing": ("start", "done", "done"),
    "launching": ("start", "done", "done", "done"),
    "waitingActive": ("start", "done", "done", "done", "done"),
    "finalizing": ("start", "done", "done", "done", "done", "done"),
    "failed": ("start", "crash"),
}


def desired(version: str = "1.0.0", correlation_id: str | None = None) -> DesiredStatus:
    """One item with one instance on node-1; `version` makes two of them differ."""
    return DesiredStatus(
        correlation_id=correlation_id,
        nodes=(DesiredNodeStatus(Identity(codename="node-1"), DesiredNodeState.PROVISIONED),),
        items=(
            DesiredItem(
                Identity(id="svc", type="service"),
                version,
                "sha256:" + ("a" if version == "1.0.0" else "b") * 64,
                Identity(id="owner"),
            ),
        ),
        instances=(DesiredInstance(Identity(id="svc"), Identity(id="subj"), 0, 1),),
        subjects=(DesiredSubject(Identity(id="subj"), SubjectType.GROUP),),
    )


def same_as(ds: DesiredStatus) -> DesiredStatus:
    """An identical desired status, as the cloud sends it again (another correlation id)."""
    return replace(ds, correlation_id="sent-again")


@dataclass
class Rig:
    """One unit's handler and everything it talks to."""

    data_dir: Path
    images: StubImages = field(default_factory=StubImages)
    launcher: StubLauncher = field(default_factory=StubLauncher)
    status: RecordingStatus = field(default_factory=RecordingStatus)
    clock: FakeClock = field(default_factory=FakeClock)
    nodes: StubNodes = field(default_factory=lambda: StubNodes("node-1"))
    storage: Storage | None = None
    handler: DesiredStatusHandler | None = None

    def build(self) -> DesiredStatusHandler:
        """A handler over the store in `data_dir` (built again: a restart)."""
        if self.storage is not None:
            self.storage.close()
        self.storage = Storage(self.data_dir)
        self.handler = DesiredStatusHandler(
            self.storage.machine(MACHINE, UPDATE_CYCLE),
            self.storage,
            self.images,
            self.launcher,
            self.status,
            self.nodes,
            active_timeout_s=1.0,
            retry=Backoff(initial=5.0, factor=2.0, cap=300.0, jitter=0.0),
            sleep=self.clock.sleep,
        )
        return self.handler

    @property
    def machine(self) -> DurableMachine:
        assert self.handler is not None
        return self.handler.machine

    def journal_since(self, start: int) -> list[JournalRecord]:
        return self.machine.journal()[start:]

    def stored(self) -> bytes | None:
        """The desired status as another connection reads it from the file: committed."""
        reader = Storage(self.data_dir, read_only=True)
        try:
            return reader.load_desired_status()
        finally:
            reader.close()

    def gate_of(self, phase: str) -> Gate | None:
        """The stub gate a phase waits on, if it waits on one."""
        return {
            "downloading": self.images.gate,
            "launching": self.launcher.launch_gate,
            "waitingActive": self.launcher.wait_gate,
        }.get(phase)

    def close_gates(self) -> None:
        self.images.gate = Gate()
        self.launcher.launch_gate = Gate()
        self.launcher.wait_gate = Gate()

    def open_gates(self) -> None:
        for gate in (self.images.gate, self.launcher.launch_gate, self.launcher.wait_gate):
            gate.opened.set()

    def seed(self, ds: DesiredStatus, phase: str) -> None:
        """Store `ds` and commit the cycle at `phase` having applied it, as a run that stopped
        there would have left the file."""
        storage = Storage(self.data_dir)
        try:
            body = dump_message(ds)
            storage.save_desired_status(body)
            machine = storage.machine(MACHINE, UPDATE_CYCLE)
            for event in PATHS[phase]:
                machine.fire(event, {"ds": digest_of(body)}, "seeded by the test")
        finally:
            storage.close()

    async def hold_in(self, ds: DesiredStatus, phase: str) -> DesiredStatusHandler:
        """A running cycle for `ds`, inside `phase`: seeded there and resumed with every gate
        closed; a phase that waits on a stub is entered before this returns."""
        self.seed(ds, phase)
        self.close_gates()
        handler = self.build()
        await handler.start()
        gate = self.gate_of(phase)
        if gate is not None:
            await gate.entered.wait()
        assert self.machine.phase == phase and handler.runner.running
        return handler

    async def run_to_rest(self) -> str:
        self.open_gates()
        assert self.handler is not None
        await settle(self.handler)
        return self.machine.phase

    async def close(self) -> None:
        if self.handler is not None:
            await self.handler.stop()
        if self.storage is not None:
            self.storage.close()
