"""What must hold of a three-node unit at every moment, not only once it has converged: the
checks the stateful model (model.py) runs after each step it takes against the real processes.

Each check is a plain function over records (the cloud's desired statuses, the unit's answers
and its timeline, the engine's container events, a service manager's state file) and returns
the problems it found, empty when the invariant holds, so that it is tested without a unit and
a failing model run names what broke. Only `EngineEvents` does I/O: it records the engine's
events for one unit in a background thread, for `no_instance_ran_twice`.

1. `acked_in_force`: a desired status the unit acked is the one it holds, or an older one that
   a newer one the cloud sent superseded (or one equal to what it holds: the unit ignores a
   status with no change). The CM stores a desired status before it acks it, so a cut anywhere
   after the ack cannot lose it.
2. `seqs_never_go_back`: in the cloud's timeline in arrival order, a boot's unit status seqs
   only grow; a seq seen again is a resend, fine when it carries the same status.
3. `no_instance_ran_twice`: never two containers of one instance at one version running at
   the same time (a version change is blue-green: the new version overlaps the old).
4. `crashes_reported` and `crashes_counted`: instances a node power loss stopped, started again
   when the node came back, are not reported as crashed (CrashLoopBackOff, StartFailure) nor
   counted in the node's health records: the SM excuses an exit before it started.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from ..cm.updatemanager.compare import compare
from ..errors import ProtocolError
from ..logs import get_logger
from ..protocol import DesiredStatus, parse_message
from ..sm.health import CRASH_LOOP, START_FAILURE
from ..sm.types import (
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_NODE,
    LABEL_SUBJECT,
    LABEL_UNIT,
    LABEL_VERSION,
)

log = get_logger("powercut.invariants")

CRASH_REASONS = (CRASH_LOOP, START_FAILURE)
"""How an SM's errorInfo message starts when it counted an exit as a crash (sm/health.py)."""


# --- 1. acked desired statuses --------------------------------------------------------------


def _parse_desired(body: bytes) -> DesiredStatus | None:
    try:
        message = parse_message(body, message_type="desiredStatus")
    except ProtocolError:
        return None
    return message if isinstance(message, DesiredStatus) else None


def _untrusted(ds: DesiredStatus) -> DesiredStatus:
    """`ds` without its certificates: the cloud stores a status without them and adds its
    PKI's to each one it sends (`CloudServer.with_trust`), so only the unit's copy has them."""
    return replace(ds, certificates=(), certificate_chains=())


def acked_in_force(
    desired: Sequence[tuple[int | None, bytes]],
    answers: Iterable[Mapping[str, Any]],
    in_force: bytes | None,
) -> list[str]:
    """Every desired status the unit acked is in force or was superseded.

    Args:
        desired: the desired statuses the cloud stored for the unit, as (seq, body)
            (`CloudState.desired_seqs`): what it sent or sends on the next connect.
        answers: the unit's answers (`CloudState.answers`); nacks are ignored.
        in_force: the desired status the CM holds (its store's body), None when none.

    An acked seq `s` holds when the CM holds `s` or a greater seq the cloud stored, or a
    status with no change from `s` (the unit acks and ignores those). A CM holding a seq the
    cloud never stored is a problem too.
    """
    bodies = {seq: body for seq, body in desired if seq is not None}
    held = _parse_desired(in_force) if in_force is not None else None
    problems: list[str] = []
    if in_force is not None and held is None:
        return ["the CM holds a desired status that does not parse"]
    if held is not None and held.seq is not None and held.seq not in bodies:
        problems.append(f"the CM holds desired status #{held.seq}, which the cloud never sent")
    for seq in sorted({a.get("seq") for a in answers if a.get("ok")}, key=lambda s: s or -1):
        if seq is None:
            continue
        if seq not in bodies:
            problems.append(f"the unit acked desired status #{seq}, which the cloud never sent")
            continue
        if held is None:
            problems.append(f"the unit acked desired status #{seq} but holds none")
            continue
        if held.seq is not None and held.seq >= seq:
            continue  # in force, or superseded by a newer one the cloud sent
        acked = _parse_desired(bodies[seq])
        if acked is not None and compare(_untrusted(held), _untrusted(acked)).empty:
            continue  # no change from what it holds: acked and ignored
        problems.append(
            f"the unit acked desired status #{seq} but holds #{held.seq}, an older, other one"
        )
    return problems


# --- 2. unit status seqs --------------------------------------------------------------------


def seqs_never_go_back(records: Iterable[Mapping[str, Any]]) -> list[str]:
    """Per boot, in arrival order, unit status seqs only grow.

    Args:
        records: the cloud's timeline (`CloudState.timeline`), in arrival order.

    A seq arriving again is a resend (ordering.py counts it a duplicate): fine when it is the
    same status, a problem when it carries another one. A seq below the boot's greatest so far
    that was not seen before went back. Statuses without a boot id or an integer seq are not
    numbered and are skipped.
    """
    greatest: dict[str, int] = {}
    seen: dict[tuple[str, int], bytes] = {}
    problems: list[str] = []
    for index, record in enumerate(records):
        status = record.get("unitStatus") or {}
        boot, seq = status.get("bootId"), status.get("seq")
        if not isinstance(boot, str) or not isinstance(seq, int) or isinstance(seq, bool):
            continue
        body = orjson.dumps(status, option=orjson.OPT_SORT_KEYS)
        before = seen.get((boot, seq))
        if before is not None:
            if before != body:
                problems.append(f"boot {boot}: seq {seq} arrived again with another status")
            continue
        seen[(boot, seq)] = body
        top = greatest.get(boot)
        if top is not None and seq < top:
            problems.append(f"boot {boot}: seq {seq} arrived after seq {top} (record {index})")
        greatest[boot] = max(seq, top if top is not None else seq)
    return problems


# --- 3. containers --------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerEvent:
    """One engine event of a unit's container, as the check needs it.

    Attributes:
        time_ns: the engine's `timeNano`.
        action: `start`, `die`, `destroy`... or `running` for one found running when the
            recording began.
        container: the container id.
        labels: the container's labels (the engine sends them with each event).
    """

    time_ns: int
    action: str
    container: str
    labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_engine(cls, event: Mapping[str, Any]) -> ContainerEvent | None:
        """An event as docker-py decodes it; None for another type of event."""
        if event.get("Type") != "container":
            return None
        actor = event.get("Actor") or {}
        attributes = actor.get("Attributes") or {}
        return cls(
            int(event.get("timeNano") or int(event.get("time") or 0) * 1_000_000_000),
            str(event.get("Action") or event.get("status") or ""),
            str(actor.get("ID") or event.get("id") or ""),
            {str(k): str(v) for k, v in attributes.items()},
        )

    @property
    def instance(self) -> tuple[str, str, str, str]:
        """(item, subject, instance, version): what may run once at a time."""
        labels = self.labels
        return (
            labels.get(LABEL_ITEM, "?"),
            labels.get(LABEL_SUBJECT, "?"),
            labels.get(LABEL_INSTANCE, "?"),
            labels.get(LABEL_VERSION, "?"),
        )


RUNNING_ACTIONS = frozenset({"start", "running"})
STOPPED_ACTIONS = frozenset({"die", "destroy"})


def no_instance_ran_twice(events: Iterable[ContainerEvent]) -> list[str]:
    """Never two containers of one instance at one version running at the same time.

    Events are replayed in the engine's time order: a container runs from its `start` (or
    `running`, when the recording found it so) to its `die`. A container started while
    another of the same (item, subject, instance, version) runs is a problem, naming both
    nodes. Containers of another version may overlap: a version change is blue-green.
    """
    running: dict[str, ContainerEvent] = {}
    problems: list[str] = []
    for event in sorted(events, key=lambda e: e.time_ns):
        if event.action in STOPPED_ACTIONS:
            running.pop(event.container, None)
            continue
        if event.action not in RUNNING_ACTIONS or event.container in running:
            continue
        twins = [e for e in running.values() if e.instance == event.instance]
        for twin in twins:
            item, subject, instance, version = event.instance
            problems.append(
                f"{item} {subject} {instance} {version} runs twice: container "
                f"{event.container[:12]} on {event.labels.get(LABEL_NODE, '?')} started while "
                f"{twin.container[:12]} on {twin.labels.get(LABEL_NODE, '?')} ran"
            )
        running[event.container] = event
    return problems


class EngineEvents:
    """Records the engine's container events for one unit in a background thread.

    Subscribed before the running containers are listed, so nothing falls between the two:
    each container running at `start()` is recorded as a `running` event first.

    Args:
        client: a docker-py `DockerClient` (`DockerRuntime.client`).
        unit: the unit's `io.aoscore.unit` label.
    """

    def __init__(self, client: Any, unit: str) -> None:
        self._client = client
        self.unit = unit
        self._events: list[ContainerEvent] = []
        self._lock = threading.Lock()
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> EngineEvents:
        filters = {"type": "container", "label": [f"{LABEL_UNIT}={self.unit}"]}
        since = time.time() - 1.0
        self._stream = self._client.events(decode=True, filters=filters, since=since)
        now_ns = time.time_ns()
        found = self._client.containers.list(filters={"label": f"{LABEL_UNIT}={self.unit}"})
        with self._lock:
            self._events += [ContainerEvent(now_ns, "running", c.id, c.labels) for c in found]
        self._thread = threading.Thread(target=self._read, name="engine-events", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        try:
            for raw in self._stream:
                event = ContainerEvent.from_engine(raw)
                if event is not None:
                    with self._lock:
                        self._events.append(event)
        except Exception as exc:  # the stream closed under us by stop(), or the engine went
            log.info("events.ended", unit=self.unit, reason=type(exc).__name__)

    def events(self) -> list[ContainerEvent]:
        """What was recorded so far."""
        with self._lock:
            return list(self._events)

    def stop(self) -> list[ContainerEvent]:
        """Stop recording; everything recorded."""
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        if self._thread is not None:
            self._thread.join(5.0)
        return self.events()

    def __enter__(self) -> EngineEvents:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- 4. crashes after a node power loss -----------------------------------------------------


def _node_name(identity: Any) -> str | None:
    if not isinstance(identity, Mapping):
        return None
    return identity.get("codename") or identity.get("id")


def crashes_reported(statuses: Iterable[Mapping[str, Any]], nodes: Iterable[str]) -> list[str]:
    """No instance on `nodes` is reported failed as a crash.

    Args:
        statuses: unit statuses (each a `unitStatus` body): the cloud's last one
            (`ordering.unit_view`), or every one received since a node's power came back.
        nodes: the nodes that lost power.

    The SM reports a counted exit as `failed` with an errorInfo starting `CrashLoopBackOff` or
    `StartFailure` (sm/health.py); an exit it excuses (the node went down) is `activating`.
    """
    lost = set(nodes)
    problems: list[str] = []
    for status in statuses:
        for group in status.get("instances") or ():
            item = (group.get("item") or {}).get("id")
            for inst in group.get("instances") or ():
                node = _node_name(inst.get("node"))
                message = (inst.get("errorInfo") or {}).get("message") or ""
                if node in lost and message.startswith(CRASH_REASONS):
                    problem = (
                        f"{item} {inst.get('instance')} on {node} reported "
                        f"{inst.get('state')}: {message[:120]}"
                    )
                    if problem not in problems:
                        problems.append(problem)
    return problems


def crashes_counted(node: str, sm_state: Mapping[str, Any]) -> list[str]:
    """No health record of a node's SM counts a crash.

    Args:
        node: the node, for the message.
        sm_state: its SM's state file, parsed (`read_sm_state`).

    Only meaningful on a unit whose images do not crash by themselves: a power loss is never
    a crash, so any count is one it should have excused.
    """
    problems = []
    for entry in sm_state.get("health") or ():
        record = entry.get("record") or {}
        if record.get("crashes"):
            key = "/".join(str(k) for k in entry.get("key") or ())
            problems.append(
                f"{node}: {key} counts {record['crashes']} crashes ({record.get('reason')})"
            )
    return problems


def read_sm_state(path: Path) -> dict[str, Any]:
    """A node's SM state file (`<sm data dir>/sm/sm-state.json`), {} when absent or torn."""
    try:
        data = orjson.loads(path.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
