"""The desired status handler: stores each new desired status and drives the update cycle.

none -> downloading -> pending -> installing -> launching -> waitingActive -> finalizing -> none

The one rule for new input (STYLE.md, 10): a desired status that compares empty against the one
in progress is ignored (a full status still goes out when idle); any other is stored (before it
is acknowledged), cancels the running phase whatever it is, and the cycle restarts at
downloading. Each phase re-derives its work from the stored desired status and what the
engines report, so resuming a phase after a cut simply does it again.

The cycle's payload names the digest of the desired status it applies. If the stored desired
status differs at start-up (a cut after it was stored, before the cycle was moved), the cycle
restarts with it.

Failures follow the one retry policy (errors.py). The payload of a resting cycle records its
failure class: a cycle that failed for a reason the unit may overcome (a network error, a node
away, no space yet, an unexpected error) is tried again with backoff (5 s doubling to 5 min), at
once when the agent starts or the cloud sends the same desired status again; one that failed
only for permanent reasons (a bad digest or signature, an unsupported platform, an invalid
argument) is not: the unit reports it and waits for a new desired status or an operator's
`retry`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from statemachine import DurableMachine, Outcome, PhaseRunner, crashpoint

from ...backoff import Backoff
from ...errors import AosCode, AosError, ProtocolError, Retry, classify, classify_code
from ...logs import get_logger
from ...protocol import (
    DesiredStatus,
    InstanceState,
    ItemState,
    UnitConfig,
    UnitConfigState,
    dump_message,
    parse_message,
)
from .compare import compare
from .crashpoints import DESIRED_STORED, NODES_STORED, UNITCONFIG_STORED
from .interfaces import (
    ImageProvider,
    InstanceLauncher,
    NodeDirectory,
    UnitConfigRecord,
    UnitStatusReporter,
    UpdateStorage,
)
from .unitconfig import nodes_refusal, version_refusal

log = get_logger("updatemanager")

MACHINE = "cycle"

Sleep = Callable[[float], Awaitable[Any]]


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


def worse(a: Retry | None, b: Retry | None) -> Retry | None:
    """The class of two failures together: one that may go away is worth a retry."""
    if a is Retry.TRANSIENT or b is Retry.TRANSIENT:
        return Retry.TRANSIENT
    return a or b


def failure_of(phase: str, payload: Mapping[str, Any] | None) -> Retry | None:
    """How the resting cycle failed, from its committed phase and payload: None when nothing
    failed. `failed` (an unexpected error) is transient: a bug or a hiccup is retried with
    backoff instead of wedging the unit."""
    if phase == "failed":
        return Retry.TRANSIENT
    payload = payload or {}
    if not (payload.get("error") or payload.get("failed_items")):
        return None
    return Retry(payload.get("retry", Retry.TRANSIENT.value))


def _guard(
    phase: Callable[[dict[str, Any]], Awaitable[Outcome]],
) -> Callable[[dict[str, Any] | None], Awaitable[Outcome]]:
    """An expected error (AosError) ends the cycle with `fail`, keeping the payload's digest
    and recording the failure's retry class; an unexpected one is logged with its traceback
    and left to the runner, which moves the cycle to the sticky failed phase."""

    async def run(payload: dict[str, Any] | None) -> Outcome:
        payload = dict(payload or {})
        try:
            return await phase(payload)
        except AosError as exc:
            kind = worse(classify(exc), failure_of("none", payload))
            log.error(
                "phase.failed",
                error=exc.message,
                retry=kind.value if kind else None,
                next="cycle ends; reported in status",
            )
            failed = {**payload, "error": exc.message, "retry": kind.value if kind else None}
            return Outcome("fail", failed, note=exc.message)
        except Exception as exc:
            log.error(
                "phase.crashed",
                error=f"{type(exc).__name__}: {exc}",
                exc_info=True,
                next="the cycle moves to failed and is retried with backoff",
            )
            raise

    return run


class DesiredStatusHandler:
    """Receives desired statuses and runs the durable update cycle.

    Args:
        machine: the update cycle's durable machine (its phase, payload and journal).
        storage: the desired status, node states and unit config.
        images: the image manager.
        launcher: the launcher.
        status: the unit status handler (told the desired status in force; a full status after
            every cycle).
        nodes: the unit's nodes (the node manager): which are known, and the unit config's
            check and set on each.
        active_timeout_s: how long waitingActive waits for instances to leave activating.
        retry: the backoff between tries of a cycle that failed for a transient reason.
        sleep: how to wait for the next try (tests pass a fake clock's).
    """

    def __init__(
        self,
        machine: DurableMachine,
        storage: UpdateStorage,
        images: ImageProvider,
        launcher: InstanceLauncher,
        status: UnitStatusReporter,
        nodes: NodeDirectory,
        *,
        active_timeout_s: float = 600.0,
        retry: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.machine = machine
        self._storage = storage
        self._images = images
        self._launcher = launcher
        self._status = status
        self._nodes = nodes
        self._active_timeout_s = active_timeout_s
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._retry = retry or Backoff(initial=5.0, factor=2.0, cap=300.0, jitter=0.2)
        self._sleep = sleep
        self._retry_task: asyncio.Task[None] | None = None
        self.on_move: Callable[[str, str, str], None] | None = None
        """Called after every committed move with (source, event, target): the metrics."""
        self.runner = PhaseRunner(
            machine,
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
        self._desired, self._digest = self._load_stored()
        # The newest desired status seq seen (kept in memory; after a restart, the stored one's).
        self._newest_seq: int | None = self._desired.seq if self._desired else None
        status.use_desired(self._desired)

    def _load_stored(self) -> tuple[DesiredStatus | None, str | None]:
        """The stored desired status; one that this version refuses (stored by an older one
        with laxer rules) is set aside: the cloud sends the desired status again on connect."""
        raw = self._storage.load_desired_status()
        if raw is None:
            return None, None
        try:
            ds = parse_message(raw, message_type="desiredStatus")
        except ProtocolError as exc:
            log.error(
                "desired.unreadable",
                error=exc.message,
                next="ignored; waiting for the cloud to send the desired status again",
            )
            return None, None
        assert isinstance(ds, DesiredStatus)
        return ds, digest_of(raw)

    @property
    def desired(self) -> DesiredStatus | None:
        return self._desired

    @property
    def idle(self) -> bool:
        return not self.runner.running

    @property
    def failure(self) -> Retry | None:
        """How the resting cycle failed for the stored desired status (None: it did not, or a
        cycle is running, or it applied another one)."""
        payload = self.machine.payload or {}
        if self.runner.running or self._desired is None or payload.get("ds") != self._digest:
            return None
        return failure_of(self.machine.phase, payload)

    async def start(self) -> None:
        """Resume where the last run stopped."""
        async with self._lock:
            if self._go_on("the agent started"):
                return
            phase = self.machine.phase
            if self.failure is Retry.PERMANENT:
                log.info(
                    "cycle.failed_permanently",
                    phase=phase,
                    error=(self.machine.payload or {}).get("error"),
                    next="waiting for a new desired status or an operator's retry",
                )
            else:
                log.info("cycle.idle", phase=phase)

    def _go_on(self, why: str) -> bool:
        """Do what the committed state says is left (call with the lock held): apply a stored
        desired status the cycle has not taken yet, run again the phase it stopped in, or try
        again a cycle that failed for a transient reason (not refetching items that failed for
        good). A move the store refuses is tried again later. Whether anything was left."""
        phase = self.machine.phase
        try:
            if self._desired is not None and self._applied != self._digest:
                log.info("cycle.restart", phase=phase, reason="stored desired status not applied")
                self._restart(f"{why}: stored desired status not applied")
            elif not self.machine.resting:
                log.info("cycle.resume", phase=phase, next=f"running {phase} again")
                self._run()
            elif self.failure is Retry.TRANSIENT:
                self._restart(f"{why}: retry after a failed cycle", skip=self._permanent_items())
            else:
                return False
        except Exception as exc:
            self._could_not_move(exc)
        return True

    async def retry(self) -> bool:
        """An operator's retry: run the cycle again for the stored desired status, whatever
        its last failure was. False when a cycle is running or nothing is stored."""
        async with self._lock:
            if self.runner.running or self._desired is None:
                return False
            self._cancel_retry()
            self._retry.reset()
            self._restart("retry asked by an operator")
            return True

    def _cancel_retry(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
            self._retry_task = None

    def _schedule_retry(self, delay_s: float, reason: str) -> None:
        self._cancel_retry()
        log.info("cycle.retry_scheduled", delay_s=round(delay_s, 1), reason=reason)
        self._retry_task = asyncio.create_task(self._retry_later(delay_s), name="cycle.retry")

    async def _retry_later(self, delay_s: float) -> None:
        await self._sleep(delay_s)
        async with self._lock:
            if self.runner.running:
                return
            self._retry_task = None
            self._go_on("retry")

    @property
    def _applied(self) -> str | None:
        """The digest of the desired status the committed cycle applies."""
        return (self.machine.payload or {}).get("ds")

    def _permanent_items(self) -> list[str]:
        """Items the resting cycle found failed for good: a retry for a transient failure of
        another part of the same desired status does not fetch them again."""
        return list((self.machine.payload or {}).get("permanent_items") or ())

    def _could_not_move(self, exc: BaseException) -> None:
        """The machine could not move (its store refused the write: a full disk, an I/O error):
        it is still where it last committed; try again after the backoff."""
        delay = self._retry.next()
        log.error(
            "cycle.error",
            error=f"{type(exc).__name__}: {exc}",
            phase=self.machine.phase,
            next=f"trying again in {delay:.0f} s",
        )
        self._schedule_retry(delay, "the cycle could not move")

    async def accept(self, ds: DesiredStatus, arrived: float) -> None:
        """Take a desired status from the cloud; returns once it is stored (then it is acked).

        Raises:
            ProtocolError: it cannot be applied (duplicates); nothing changed.
            StorageError: it could not be stored (noMemory on a full disk); nothing changed.
        """
        validate(ds)
        async with self._lock:
            newest = self._newest_seq
            if ds.seq is not None and newest is not None and ds.seq < newest:
                # Reordered by the network, or replayed: acked, and the newer one stays.
                log.warning(
                    "desired.stale",
                    seq=ds.seq,
                    in_force_seq=newest,
                    next="acked and ignored; the newer desired status stays in force",
                )
                return
            if ds.seq is not None:
                self._newest_seq = ds.seq
            changes = compare(self._desired, ds)
            if changes.empty:
                log.info(
                    "desired.ignored",
                    reason="no change from the desired status in force",
                    phase=self.machine.phase,
                )
                if self.idle and self.failure is Retry.TRANSIENT:
                    self._schedule_retry(0.0, "the same desired status arrived again")
                elif self.idle:
                    self._spawn(self._status.send_full("desired status needs no update"))
                return
            body = dump_message(ds)
            self._storage.save_desired_status(body)
            crashpoint(DESIRED_STORED)
            # Stored: from here on it is ours to apply, and a failure below is tried again.
            self._cancel_retry()
            self._retry.reset()
            self._desired, self._digest = ds, digest_of(body)
            self._status.use_desired(ds)
            log.info("desired.stored", digest=self._digest, changes=changes.summary())
            phase = self.machine.phase
            try:
                if self.runner.running:
                    await self.runner.cancel("superseded by a new desired status")
                    log.info(
                        "cycle.superseded",
                        phase=phase,
                        latency_s=round(time.monotonic() - arrived, 6),
                        next="restarting at downloading",
                    )
                self._restart(changes.summary())
            except Exception as exc:
                self._could_not_move(exc)

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

    def _restart(self, note: str, skip: list[str] | None = None) -> None:
        """Begin a cycle at downloading for the stored desired status, from wherever it rests
        (`supersede` from a working phase, `start` from none or failed); `skip` names items not
        to fetch again (found failed for good by the last try of the same desired status)."""
        event = "supersede" if self.machine.can("supersede") else "start"
        payload: dict[str, Any] = {"ds": self._digest}
        if skip:
            payload["skip"] = skip
        self._fire(event, payload, note)
        self._run()

    def _run(self) -> None:
        task = self.runner.start()
        task.add_done_callback(self._cycle_done)

    def _cycle_done(self, task: asyncio.Task[str]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._could_not_move(exc)
            return
        failure = self.failure
        if failure is Retry.TRANSIENT:
            self._schedule_retry(self._retry.next(), "the cycle failed")
            then = "retried with backoff"
        else:
            self._retry.reset()
            then = "idle" if failure is None else "waiting for a new desired status or a retry"
        log.info(
            "cycle.ended",
            phase=task.result(),
            payload_error=(self.machine.payload or {}).get("error"),
            failed=failure.value if failure else None,
            next=then,
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
        if self.on_move is not None:
            self.on_move(source, event, target)

    def _ds(self) -> DesiredStatus:
        if self._desired is None:
            raise AosError("no desired status is stored", code=AosCode.WRONG_STATE)
        return self._desired

    async def _downloading(self, payload: dict[str, Any]) -> Outcome:
        records = await self._images.download(self._ds(), skip=payload.get("skip") or ())
        failed = [r for r in records if r.error is not None]
        kind = None
        permanent = []
        for r in failed:
            assert r.error is not None
            item_kind = classify_code(r.error.aos_code)
            kind = worse(kind, item_kind)
            if item_kind is Retry.PERMANENT:
                permanent.append(r.item_id)
        names = [r.item_id for r in failed]
        return Outcome(
            "done",
            {
                **payload,
                "failed_items": names,
                "permanent_items": permanent,
                "retry": kind.value if kind else None,
            },
            note=f"{len(records) - len(failed)} items ready, failed: {names}",
        )

    async def _pending(self, payload: dict[str, Any]) -> Outcome:
        return Outcome("done", payload)

    async def _installing(self, payload: dict[str, Any]) -> Outcome:
        ds = self._ds()
        states = {n.item.key or "": n.state.value for n in ds.nodes}
        if states != self._storage.node_states():
            self._storage.set_node_states(states)
            crashpoint(NODES_STORED)
            log.info("nodes.stored", states=states)
        config = ds.unit_config
        if config is not None:
            installed = self._storage.unit_config()
            body = dump_message(DesiredStatus(unit_config=config))
            if installed is None or installed.body != body:
                await self._install_unit_config(config, installed, body)
        return Outcome("done", payload)

    async def _install_unit_config(
        self, config: UnitConfig, installed: UnitConfigRecord | None, body: bytes
    ) -> None:
        """Install a unit config that differs from the installed one, or record why not: its
        version (semver, strictly greater), its nodes (known to the unit), then every node's
        own check and set (`NodeConfigurator`)."""
        error = version_refusal(installed.version if installed else None, config.version)
        error = error or nodes_refusal((n.node.key or "" for n in config.nodes), self._nodes.knows)
        if error is None:
            error = await self._nodes.apply_unit_config(config)
        state = UnitConfigState.FAILED if error else UnitConfigState.INSTALLED
        record = UnitConfigRecord(config.version, state, body, error)
        self._storage.save_unit_config(record)
        crashpoint(UNITCONFIG_STORED)
        log.info(
            "unitconfig.stored",
            version=config.version,
            state=state.value,
            error=error.message if error else None,
            next="the installed one stays in force" if error else "in force",
        )
        if error is None:
            self._nodes.set_unit_nodes(n.node.key or "" for n in config.nodes)

    async def _launching(self, payload: dict[str, Any]) -> Outcome:
        records = await self._launcher.launch(
            self._ds(), self._images.records(), self._storage.node_states()
        )
        return Outcome("done", payload, note=f"{len(records)} instances placed")

    async def _waiting_active(self, payload: dict[str, Any]) -> Outcome:
        if await self._launcher.wait_active(self._active_timeout_s):
            return Outcome("done", payload)
        late = self._launcher.give_up_activating(self._active_timeout_s)
        names = sorted({item_id for item_id, _ in late})
        return Outcome(
            "timeout",
            {
                **payload,
                "late_items": [list(pair) for pair in late],
                "failed_items": sorted({*(payload.get("failed_items") or ()), *names}),
                "retry": Retry.TRANSIENT.value,  # a late instance may yet start
            },
            note=f"instances of {names} not active in {self._active_timeout_s:g} s",
        )

    async def _finalizing(self, payload: dict[str, Any]) -> Outcome:
        """Install the items whose instances run (AosCore leaves every item pending when
        waitingActive times out; we install what works). An item whose instances did not
        become active in time stays pending, its version kept, and the cycle is retried."""
        late = {tuple(pair) for pair in payload.get("late_items") or ()}
        running = {
            (r.key.item_id, r.version)
            for r in self._launcher.records()
            if r.state != InstanceState.FAILED
        }
        late_ids = {item_id for item_id, _ in late}
        # A late item's new version stays pending; the version it replaces may still serve
        # (blue-green), so it is kept too.
        serving = {
            (r.item_id, r.version)
            for r in self._images.records()
            if r.item_id in late_ids and r.state == ItemState.INSTALLED
        }
        items = [i for i in self._ds().items if (i.item.key or "") not in late_ids]
        self._images.finalize(items, running | late | serving)
        return Outcome("done", payload)
