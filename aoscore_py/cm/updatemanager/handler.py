"""The desired status handler: stores each new desired status and drives the update cycle.

none -> downloading -> pending -> installing -> launching -> waitingActive -> finalizing -> none

The one rule for new input (STYLE.md, 10): a desired status that compares empty against the one
in progress is ignored (a full status still goes out when idle); any other is stored (before it
is acknowledged), cancels the running phase whatever it is, and the cycle restarts at
downloading. Each phase re-derives its work from the stored desired status and what the
engines report, so resuming a phase after a cut simply does it again.

The cycle's payload names the digest of the desired status it applies. If the stored desired
status differs at start-up (a cut after it was stored, before the cycle was moved), the cycle
restarts with it. A cycle that ended with a failure the unit may overcome (an item that did not
download, a phase that failed, an unexpected error) is tried again with backoff (5 s doubling
to 5 min), at once when the agent starts or the cloud sends the same desired status again.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import peewee

from statemachine import UPDATE_CYCLE, DurableMachine, Outcome, PhaseRunner, crashpoint

from ...backoff import Backoff
from ...errors import AosCode, AosError, ProtocolError
from ...logs import get_logger
from ...protocol import (
    DesiredStatus,
    ErrorInfo,
    InstanceState,
    UnitConfigState,
    dump_message,
    parse_message,
)
from ..imagemanager.manager import ImageManager
from ..launcher.launcher import Launcher
from .compare import compare
from .interfaces import UnitConfigRecord, UpdateStorage
from .unitstatus import UnitStatusHandler

log = get_logger("updatemanager")

MACHINE = "cycle"


def digest_of(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def validate(ds: DesiredStatus) -> None:
    """Refuse a desired status that parses but cannot be applied as a whole.

    Raises:
        ProtocolError: duplicate items, instances, nodes or subjects (invalidArgument).
    """

    def unique(kind: str, path: str, keys: list[object]) -> None:
        seen: set[object] = set()
        for index, key in enumerate(keys):
            if key in seen:
                raise ProtocolError(f"$.{path}[{index}]", f"duplicate {kind} {key!r}")
            seen.add(key)

    unique("item", "items", [i.item.key for i in ds.items])
    unique("instance", "instances", [(i.item.key, i.subject.key) for i in ds.instances])
    unique("node", "nodes", [n.item.key for n in ds.nodes])
    unique("subject", "subjects", [s.identity.key for s in ds.subjects])
    if ds.unit_config is not None:
        unique("node", "unitConfig.nodes", [n.node.key for n in ds.unit_config.nodes])


def _guard(
    phase: Callable[[dict[str, Any]], Awaitable[Outcome]],
) -> Callable[[dict[str, Any] | None], Awaitable[Outcome]]:
    """An expected error (AosError) ends the cycle with `fail`, keeping the payload's digest."""

    async def run(payload: dict[str, Any] | None) -> Outcome:
        payload = dict(payload or {})
        try:
            return await phase(payload)
        except AosError as exc:
            log.error("phase.failed", error=exc.message, next="cycle ends; reported in status")
            return Outcome("fail", {**payload, "error": exc.message}, note=exc.message)

    return run


class DesiredStatusHandler:
    """Receives desired statuses and runs the durable update cycle.

    Args:
        storage: the desired status, node states and unit config.
        db: the database the cycle's phase and journal live in.
        images: the image manager.
        launcher: the launcher.
        status: the unit status handler (a full status after every cycle).
        nodes: the codenames of the unit's nodes.
        active_timeout_s: how long waitingActive waits for instances to leave activating.
    """

    def __init__(
        self,
        storage: UpdateStorage,
        db: peewee.Database,
        images: ImageManager,
        launcher: Launcher,
        status: UnitStatusHandler,
        nodes: frozenset[str],
        *,
        active_timeout_s: float = 600.0,
    ) -> None:
        self._storage = storage
        self._images = images
        self._launcher = launcher
        self._status = status
        self._nodes = nodes
        self._active_timeout_s = active_timeout_s
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry = Backoff(initial=5.0, factor=2.0, cap=300.0, jitter=0.2)
        self._retry_task: asyncio.Task[None] | None = None
        self.machine = DurableMachine(MACHINE, UPDATE_CYCLE, db)
        self.runner = PhaseRunner(
            self.machine,
            {
                "downloading": _guard(self._downloading),
                "pending": _guard(self._pending),
                "installing": _guard(self._installing),
                "launching": _guard(self._launching),
                "waitingActive": _guard(self._waiting_active),
                "finalizing": _guard(self._finalizing),
            },
            on_move=self._moved,
        )
        raw = storage.load_desired_status()
        self._desired: DesiredStatus | None = None
        self._digest: str | None = None
        if raw is not None:
            self._desired = parse_message(raw, message_type="desiredStatus")  # type: ignore[assignment]
            self._digest = digest_of(raw)

    @property
    def desired(self) -> DesiredStatus | None:
        return self._desired

    @property
    def idle(self) -> bool:
        return not self.runner.running

    async def start(self) -> None:
        """Resume where the last run stopped."""
        async with self._lock:
            phase = self.machine.phase
            applied = (self.machine.payload or {}).get("ds")
            if self._desired is not None and applied != self._digest:
                log.info(
                    "cycle.restart", phase=phase, reason="stored desired status not yet applied"
                )
                self._restart("stored desired status not applied")
            elif not self.machine.resting:
                log.info("cycle.resume", phase=phase, next=f"running {phase} again")
                self._run()
            elif self._needs_retry():
                self._schedule_retry(0.0, "the last cycle failed")
            else:
                log.info("cycle.idle", phase=phase)

    def _needs_retry(self) -> bool:
        """The resting cycle applied the stored desired status and something failed."""
        payload = self.machine.payload or {}
        if self._desired is None or payload.get("ds") != self._digest:
            return False
        return self.machine.phase == "failed" or bool(
            payload.get("error") or payload.get("failed_items")
        )

    def _cancel_retry(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
            self._retry_task = None

    def _schedule_retry(self, delay_s: float, reason: str) -> None:
        self._cancel_retry()
        log.info("cycle.retry_scheduled", delay_s=round(delay_s, 1), reason=reason)
        self._retry_task = asyncio.create_task(self._retry_later(delay_s), name="cycle.retry")

    async def _retry_later(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        async with self._lock:
            if self.runner.running or not self._needs_retry():
                return
            self._retry_task = None
            self._restart("retry after a failed cycle")

    async def accept(self, ds: DesiredStatus, arrived: float) -> None:
        """Take a desired status from the cloud; returns once it is stored (then it is acked).

        Raises:
            ProtocolError: it cannot be applied (duplicates); nothing changed.
        """
        validate(ds)
        async with self._lock:
            changes = compare(self._desired, ds)
            if changes.empty:
                log.info(
                    "desired.ignored",
                    reason="no change from the desired status in force",
                    phase=self.machine.phase,
                )
                if self.idle and self._needs_retry():
                    self._schedule_retry(0.0, "the same desired status arrived again")
                elif self.idle:
                    self._spawn(self._status.send_full("desired status needs no update"))
                return
            self._cancel_retry()
            self._retry.reset()
            body = dump_message(ds)
            self._storage.save_desired_status(body)
            crashpoint("updatemanager.desired.stored")
            self._desired, self._digest = ds, digest_of(body)
            log.info("desired.stored", digest=self._digest, changes=changes.summary())
            phase = self.machine.phase
            if self.runner.running:
                await self.runner.cancel("superseded by a new desired status")
                log.info(
                    "cycle.superseded",
                    phase=phase,
                    latency_s=round(time.monotonic() - arrived, 6),
                    next="restarting at downloading",
                )
            self._restart(changes.summary())

    async def stop(self) -> None:
        """Cancel the running phase at its next await; it stays committed for the next start."""
        async with self._lock:
            if self.runner.running:
                phase = self.machine.phase
                elapsed = await self.runner.cancel("agent shutting down")
                log.info(
                    "cycle.interrupted",
                    phase=phase,
                    seconds=round(elapsed, 3),
                    next="resumes at this phase on the next start",
                )
        self._cancel_retry()
        for task in list(self._tasks):
            task.cancel()

    def _restart(self, note: str) -> None:
        """Begin a cycle at downloading for the stored desired status, from wherever it rests
        (`supersede` from a working phase, `start` from none or failed)."""
        event = "supersede" if self.machine.can("supersede") else "start"
        self._fire(event, {"ds": self._digest}, note)
        self._run()

    def _run(self) -> None:
        task = self.runner.start()
        task.add_done_callback(self._cycle_done)

    def _cycle_done(self, task: asyncio.Task[str]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("cycle.error", error=f"{type(exc).__name__}: {exc}", phase=self.machine.phase)
            return
        if self._needs_retry():
            self._schedule_retry(self._retry.next(), "the cycle failed")
        else:
            self._retry.reset()
        log.info(
            "cycle.ended",
            phase=task.result(),
            payload_error=(self.machine.payload or {}).get("error"),
        )
        self._spawn(self._status.send_full(f"cycle ended in {task.result()}"))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fire(self, event: str, payload: dict[str, Any], note: str) -> None:
        source = self.machine.phase
        self._moved(source, event, self.machine.fire(event, payload, note))

    def _moved(self, source: str, event: str, target: str) -> None:
        log.info("phase.entered", phase=target, previous=source, trigger=event)

    def _ds(self) -> DesiredStatus:
        if self._desired is None:
            raise AosError("no desired status is stored", code=AosCode.WRONG_STATE)
        return self._desired

    async def _downloading(self, payload: dict[str, Any]) -> Outcome:
        records = await self._images.download(self._ds())
        failed = [r.item_id for r in records if r.error is not None]
        return Outcome(
            "done",
            {**payload, "failed_items": failed},
            note=f"{len(records) - len(failed)} items ready, failed: {failed}",
        )

    async def _pending(self, payload: dict[str, Any]) -> Outcome:
        return Outcome("done", payload)

    async def _installing(self, payload: dict[str, Any]) -> Outcome:
        ds = self._ds()
        states = {n.item.key or "": n.state.value for n in ds.nodes}
        if states != self._storage.node_states():
            self._storage.set_node_states(states)
            crashpoint("updatemanager.nodes.stored")
            log.info("nodes.stored", states=states)
        config = ds.unit_config
        if config is not None:
            current = self._storage.unit_config()
            body = dump_message(DesiredStatus(unit_config=config))
            if current is None or current.body != body:
                unknown = sorted({n.node.key or "" for n in config.nodes} - self._nodes)
                if unknown:
                    record = UnitConfigRecord(
                        config.version,
                        UnitConfigState.FAILED,
                        body,
                        ErrorInfo(
                            int(AosCode.NOT_FOUND), 0, f"unknown nodes in unit config: {unknown}"
                        ),
                    )
                else:
                    record = UnitConfigRecord(config.version, UnitConfigState.INSTALLED, body)
                self._storage.save_unit_config(record)
                crashpoint("updatemanager.unitconfig.stored")
                log.info("unitconfig.stored", version=config.version, state=record.state.value)
        return Outcome("done", payload)

    async def _launching(self, payload: dict[str, Any]) -> Outcome:
        records = await self._launcher.launch(
            self._ds(), self._images.records(), self._storage.node_states()
        )
        return Outcome("done", payload, note=f"{len(records)} instances placed")

    async def _waiting_active(self, payload: dict[str, Any]) -> Outcome:
        ok = await self._launcher.wait_active(self._active_timeout_s)
        return Outcome("done" if ok else "timeout", payload)

    async def _finalizing(self, payload: dict[str, Any]) -> Outcome:
        running = {
            (r.key.item_id, r.version)
            for r in self._launcher.records()
            if r.state != InstanceState.FAILED
        }
        self._images.finalize(self._ds().items, running)
        return Outcome("done", payload)
