"""The unit's nodes as the CM sees them through their SMs' streams: a registry, with no gRPC.

Each node's service manager dials the CM and holds one `RegisterSM` stream (docs/sm-protocol.md).
This module keeps every rule of that link and none of its I/O, as `communication/session.py`
does for the cloud: messages from an SM go in through `NodeLink.receive`; messages to it go into
the stream's `Outbox`, which the gRPC adapter (`smserver.py`) drains. The adapter only moves
messages and calls `expire` when `next_deadline` passes.

Per node, `RemoteNode` keeps:

- whether its SM is connected, and since when (`since`, on the manager's monotonic clock);
- what its last `SMInfo` said (runtimes and shared resources), its last instance statuses
  (`NodeInstancesStatus` replaces them all, `UpdateInstancesStatus` updates the ones it names),
  its node config status, and its last alerts;
- its state: `paused` or `provisioned` as the desired status asks, and `error` once its SM has
  been gone (or, for a node named by the unit config, never came) for `node_timeout_s` (AosCore's
  smConnectionTimeout, 60 s). A node that comes back is no longer in error.

`RemoteNode` is the contract's `ServiceManager`, so the launcher drives a remote node as it drove
the in-process one. The link is level-triggered: `run_instances` sends the whole wanted set
(`UpdateInstances`: start = every instance the node must run, stop = what it reports but must
not run) and waits for the node's `UpdateInstancesStatus`; `instance_statuses` answers from the
last report, without a round trip (the SM pushes every change). Each `NodeInstancesStatus` (the
first one of a new stream included) and each node going to `error` calls `on_node_changed`, so
the CM compares again and sends again when the node does not run what it should.

A node that is not connected cannot be asked anything: both calls raise an `AosError` with
code `timeout`, which the retry policy (`errors.classify`) treats as transient.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Protocol

import orjson

from ...errors import AosCode, AosError, ProtocolError
from ...logs import get_logger
from ...nodes import InstanceKey, InstanceSpec, InstanceStatus, wire
from ...nodes.proto import sm_pb2
from ...protocol import (
    ErrorInfo,
    Identity,
    NodeInfo,
    NodeState,
    UnitConfig,
    UnitConfigState,
    UnitConfigStatus,
)
from ...protocol._write import node_config as node_config_json

log = get_logger("launcher.nodes")

DEFAULT_NODE_TIMEOUT_S = 60.0
"""How long an SM may be gone before its node is `error` (AosCore's smConnectionTimeout)."""

DEFAULT_ANSWER_TIMEOUT_S = 300.0
"""How long `run_instances` waits for `UpdateInstancesStatus`: the SM answers once it acted,
which may include fetching the blobs of new images from the CM's blob server."""

MAX_ALERTS = 32
"""Alerts kept per node (the newest); older ones are only in the log."""

NodeChanged = Callable[[str], None]
"""Called with a node id when the CM should compare that node again. It runs inside message
handling: it must not block (schedule work, do not do it)."""


class Outbox(Protocol):
    """Where the messages for one SM stream wait until the adapter writes them."""

    def put(self, message: sm_pb2.SMIncomingMessages) -> None:
        """Queue `message`; never blocks. After `close`, it is dropped."""
        ...

    def close(self, reason: str) -> None:
        """End the stream after what is queued (replaced by a newer stream, CM stopping)."""
        ...


@dataclass(frozen=True)
class NodeAlert:
    """An alert an SM sent: its case (`instance_alert`, `system_alert`...), and what it says."""

    kind: str
    message: str
    at: datetime | None = None
    instance: InstanceKey | None = None
    version: str = ""


def not_connected(node_id: str, why: str = "") -> AosError:
    """The error of a call to a node whose SM is not connected: transient (code timeout)."""
    return AosError(f"node {node_id} is not connected{why}", code=AosCode.TIMEOUT)


@dataclass
class _Answer:
    """A `run_instances` waiting for its `UpdateInstancesStatus`."""

    future: asyncio.Future[list[InstanceStatus]]
    versions: dict[InstanceKey, str]  # what it asked to run
    stop: frozenset[InstanceKey]  # what it asked to stop

    def matches(self, statuses: Sequence[InstanceStatus]) -> bool:
        """Whether `statuses` reads as this request's answer: every instance it asked to run,
        at the version asked, and nothing it did not name."""
        named = {s.key: s.version for s in statuses}
        return self.versions.keys() <= named.keys() and all(
            self.versions.get(key) == version or key in self.stop for key, version in named.items()
        )


class NodeLink:
    """One `RegisterSM` stream of one node, from its `SMInfo` to its end.

    Made by `NodeManager.register`. A link replaced by a newer stream of the same node is no
    longer `current`: what it still receives is ignored.
    """

    def __init__(self, node: RemoteNode, outbox: Outbox, peer: str) -> None:
        self.node = node
        self.outbox = outbox
        self.peer = peer  # the SM's address, for the log
        self.unanswered = 0  # UpdateInstances sent on this stream and not answered yet

    @property
    def current(self) -> bool:
        """Whether this is the node's stream now."""
        return self.node._link is self

    def receive(self, message: sm_pb2.SMOutgoingMessages) -> None:
        """Take one message from the SM.

        A case this CM does not read (AosCore's logs and monitoring, which our `.proto`
        reserves) is skipped, never an error.

        Raises:
            ProtocolError: the message cannot be read (an unknown state, no item id...); it is
                refused whole and nothing changes, but the stream stays usable.
        """
        case = message.WhichOneof("SMOutgoingMessage")
        if not self.current:
            log.debug("sm.stale_message", node=self.node.node_id, case=case, peer=self.peer)
            return
        handler = _RECEIVERS.get(case or "")
        if handler is None:
            log.debug("sm.message_skipped", node=self.node.node_id, case=case)
            return
        handler(self.node, getattr(message, case or ""))

    def close(self) -> None:
        """The stream ended: the node is disconnected, unless a newer stream replaced it."""
        self.outbox.close("stream ended")
        self.node._disconnected(self)


class RemoteNode:
    """One node of the unit, reached through its SM's stream: the contract's ServiceManager.

    Made by the `NodeManager`, one per node id for the manager's lifetime: streams come and go,
    the object stays, so the launcher may hold it.
    """

    def __init__(self, node_id: str, manager: NodeManager, since: float) -> None:
        self.node_id = node_id
        self.since = since  # monotonic time of the last connect or disconnect (or of creation)
        self.ever_connected = False
        self.ever_reported = False  # its SM sent NodeInstancesStatus once
        self._reported_on_stream = False  # ... on the stream it holds now
        self.runtimes: wire.NodeRuntimes | None = None  # the last SMInfo
        self.config_status: UnitConfigStatus | None = None  # the last NodeConfigStatus
        self.alerts: deque[NodeAlert] = deque(maxlen=MAX_ALERTS)
        self._manager = manager
        self._link: NodeLink | None = None
        self._statuses: dict[InstanceKey, InstanceStatus] = {}
        # What a report says of an instance beyond our status: item type, manifest digest.
        self._reported: dict[InstanceKey, tuple[str, str]] = {}
        self._lock = asyncio.Lock()
        self._answer: _Answer | None = None
        self._config_answer: tuple[str, asyncio.Future[UnitConfigStatus]] | None = None
        self._config_lock = asyncio.Lock()
        self._error_reported = False

    def __repr__(self) -> str:
        return f"RemoteNode({self.node_id!r}, connected={self.connected}, state={self.state})"

    # -- state ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def gone_for(self) -> float:
        """Seconds since the SM went away (or since the node was known, if it never came);
        0 while connected."""
        return 0.0 if self.connected else max(0.0, self._manager.clock() - self.since)

    @property
    def timed_out(self) -> bool:
        return not self.connected and self.gone_for >= self._manager.node_timeout_s

    @property
    def state(self) -> NodeState:
        """`error` once the SM has been gone for the node timeout, else the desired state."""
        if self.timed_out:
            return NodeState.ERROR
        if self._manager._desired.get(self.node_id) == NodeState.PAUSED:
            return NodeState.PAUSED
        return NodeState.PROVISIONED

    def last_alert(self, key: InstanceKey) -> NodeAlert | None:
        """The newest alert kept about instance `key`."""
        return next((a for a in reversed(self.alerts) if a.instance == key), None)

    def needs_update(self, specs: Sequence[InstanceSpec]) -> bool:
        """Whether the node's last report differs from `specs`: a wanted instance missing or
        of another version or manifest, or an instance reported that is not wanted. What the
        CM checks after `on_node_changed` before calling `run_instances` again."""
        wanted = {s.key: s for s in specs}
        if set(self._statuses) != set(wanted):
            return True
        for key, spec in wanted.items():
            digest = self._reported.get(key, ("", ""))[1]
            if self._statuses[key].version != spec.version:
                return True
            if digest and digest != spec.image.manifest_digest:
                return True
        return False

    # -- the contract -------------------------------------------------------------------------

    async def node_info(self) -> NodeInfo:
        """The node as the unit status reports it: connected or not, its state, its runtimes.

        A node's own DMIPS and RAM are not in `SMInfo`; each runtime reports the node's (our SM
        sends one runtime with the node's figures), so the node's are the largest any runtime
        reports.
        """
        state = self.state
        error = None
        if state == NodeState.ERROR:
            error = ErrorInfo(
                int(AosCode.TIMEOUT),
                0,
                f"the SM of node {self.node_id} has not been connected for {self.gone_for:.0f} s",
            )
        info = self.runtimes
        return NodeInfo(
            identity=Identity(codename=self.node_id),
            state=state,
            is_connected=self.connected,
            max_dmips=_largest(r.max_dmips for r in info.runtimes) if info else None,
            total_ram=_largest(r.total_ram for r in info.runtimes) if info else None,
            runtimes=info.runtimes if info else None,
            resources=info.resources if info else None,
            error_info=error,
        )

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        """Make the node run exactly `specs`; return its answer.

        Sends `UpdateInstances` with every spec to start (unchanged ones included) and, to
        stop, what the node last reported that is not in `specs`; waits for the node's
        `UpdateInstancesStatus`. Calls for one node run one at a time.

        Raises:
            AosError: code timeout when the node is not connected, goes away or is replaced by
                a newer stream before answering, or does not answer in the answer timeout.
            ProtocolError: the node's answer cannot be read.
            LocalError: a spec cannot go on the wire (an item type the link does not know).
        """
        async with self._lock:
            link = self._link
            if link is None:
                raise not_connected(self.node_id)
            versions = {s.key: s.version for s in specs}
            stop = sorted(k for k in self._statuses if k not in versions)
            types = {k: self._reported[k][0] for k in stop if k in self._reported}
            message = wire.update_instances(specs, stop, item_types=types)
            future = asyncio.get_running_loop().create_future()
            answer = _Answer(future, versions, frozenset(stop))
            self._answer = answer
            timeout = self._manager.answer_timeout_s
            try:
                link.outbox.put(message)
                link.unanswered += 1
                log.info(
                    "node.update_sent",
                    node=self.node_id,
                    start=len(specs),
                    stop=[str(k) for k in stop],
                    next=f"waiting up to {timeout:g} s for its UpdateInstancesStatus",
                )
                try:
                    async with asyncio.timeout(timeout):
                        return await answer.future
                except TimeoutError:
                    raise AosError(
                        f"node {self.node_id} did not answer UpdateInstances in {timeout:g} s",
                        code=AosCode.TIMEOUT,
                    ) from None
            finally:
                if self._answer is answer:
                    self._answer = None

    async def instance_statuses(self) -> list[InstanceStatus]:
        """The instances the node last reported, in key order (no round trip: the SM pushes).

        Raises:
            AosError: code timeout when the node is not connected (what it last said may be
                stale; the unit status then reports the node's instances degraded).
        """
        if self._link is None:
            raise not_connected(self.node_id)
        if not self._reported_on_stream:
            raise not_connected(self.node_id, " (its SM has not said what it runs yet)")
        return [self._statuses[k] for k in sorted(self._statuses)]

    async def configure(self, step: str, version: str, body: bytes) -> UnitConfigStatus:
        """Send this node its unit config entry (`step` "check": `CheckNodeConfig`, "set":
        `SetNodeConfig`) and return the node's `NodeConfigStatus` for that version.

        Raises:
            AosError: code timeout when the node is not connected, goes away, or does not
                answer in the answer timeout.
        """
        build = wire.check_node_config if step == "check" else wire.set_node_config
        async with self._config_lock:
            link = self._link
            if link is None:
                raise not_connected(self.node_id)
            future: asyncio.Future[UnitConfigStatus] = asyncio.get_running_loop().create_future()
            self._config_answer = (version, future)
            timeout = self._manager.answer_timeout_s
            try:
                link.outbox.put(build(self.node_id, version, body))
                log.info("node.config_sent", node=self.node_id, step=step, version=version)
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                raise AosError(
                    f"node {self.node_id} did not answer {step} of node config {version} "
                    f"in {timeout:g} s",
                    code=AosCode.TIMEOUT,
                ) from None
            finally:
                self._config_answer = None

    # -- the stream ---------------------------------------------------------------------------

    def _connected(self, link: NodeLink, info: wire.NodeRuntimes) -> None:
        old = self._link
        self._link = link
        self.runtimes = info
        self.since = self._manager.clock()
        self.ever_connected = True
        self._reported_on_stream = False
        self._error_reported = False
        if old is not None:
            old.outbox.close(f"replaced by a newer stream of node {self.node_id} from {link.peer}")
            self._fail_answer(f" (its SM reconnected from {link.peer} before answering)")
            log.warning(
                "node.replaced",
                node=self.node_id,
                old_peer=old.peer,
                peer=link.peer,
                next="the old stream is closed; two SMs with one node id would take turns",
            )
        log.info(
            "node.connected",
            node=self.node_id,
            peer=link.peer,
            runtimes=[r.identity.key for r in info.runtimes],
            next="waiting for its NodeInstancesStatus",
        )

    def _disconnected(self, link: NodeLink) -> None:
        if self._link is not link:
            return
        self._link = None
        self.since = self._manager.clock()
        self._fail_answer(" (its SM went away before answering)")
        log.warning(
            "node.disconnected",
            node=self.node_id,
            peer=link.peer,
            next=f"reported error if it stays away {self._manager.node_timeout_s:g} s",
        )

    def _fail_answer(self, why: str) -> None:
        answer, self._answer = self._answer, None
        if answer is not None and not answer.future.done():
            answer.future.set_exception(not_connected(self.node_id, why))
        waiting, self._config_answer = self._config_answer, None
        if waiting is not None and not waiting[1].done():
            waiting[1].set_exception(not_connected(self.node_id, why))

    def _remember(self, message: sm_pb2.NodeInstancesStatus | sm_pb2.UpdateInstancesStatus) -> None:
        for status in message.instances:
            try:
                kind = wire.item_type_of(status.instance)
            except ProtocolError:
                kind = "service"
            key = wire.instance_key(status.instance)
            self._reported[key] = (kind, status.manifest_digest)

    def _on_node_instances(self, message: sm_pb2.NodeInstancesStatus) -> None:
        statuses = wire.instance_statuses_from_proto(message, node=self.node_id)
        self._statuses = {s.key: s for s in statuses}
        self._reported = {}
        self._remember(message)
        self.ever_reported = True
        self._reported_on_stream = True
        self._manager._signal_came()
        log.info("node.instances", node=self.node_id, instances=len(statuses))
        self._manager._notify(self.node_id)

    def _on_update_status(self, message: sm_pb2.UpdateInstancesStatus) -> None:
        link = self._link
        assert link is not None, "a message on a stream that is not the node's"
        # The wire has no correlation id, but an SM answers in order: while requests sent
        # earlier (given up on after a timeout) are unanswered, this answer is theirs, unless
        # it reads as the answer to the request waiting now (an SM that dropped an answer must
        # not make every later call time out).
        link.unanswered = max(0, link.unanswered - 1)
        answer = self._answer
        try:
            statuses = wire.instance_statuses_from_proto(message, node=self.node_id)
        except ProtocolError as exc:
            if answer is not None and link.unanswered == 0 and not answer.future.done():
                answer.future.set_exception(exc)
            raise
        if answer is not None and link.unanswered > 0 and not answer.matches(statuses):
            answer = None
        if answer is not None:
            self._answer = None
            link.unanswered = 0
            # The node now runs exactly what was asked: what it was told to stop and does not
            # name in its answer is gone.
            named = {s.key for s in statuses}
            for key in [k for k in self._statuses if k not in answer.versions and k not in named]:
                del self._statuses[key]
                self._reported.pop(key, None)
        self._statuses.update((s.key, s) for s in statuses)
        self._remember(message)
        if answer is None or answer.future.done():
            log.info("node.late_answer", node=self.node_id, instances=len(statuses))
            return
        answer.future.set_result(statuses)

    def _on_sm_info(self, message: sm_pb2.SMInfo) -> None:
        info = wire.node_runtimes(message)
        if info.node_id != self.node_id:
            raise ProtocolError(
                "SMInfo.node_id", f"{info.node_id!r} on the stream of node {self.node_id!r}"
            )
        self.runtimes = info
        log.info("node.info", node=self.node_id, runtimes=[r.identity.key for r in info.runtimes])

    def _on_config_status(self, message: sm_pb2.NodeConfigStatus) -> None:
        self.config_status = wire.node_config_status_from_proto(message)
        waiting = self._config_answer
        version = self.config_status.version
        if waiting is not None and waiting[0] == version and not waiting[1].done():
            waiting[1].set_result(self.config_status)
        log.info(
            "node.config_status",
            node=self.node_id,
            state=str(self.config_status.state),
            version=self.config_status.version,
        )

    def _on_alert(self, message: sm_pb2.Alert) -> None:
        kind = message.WhichOneof("AlertItem")
        at = message.timestamp.ToDatetime(tzinfo=UTC) if message.HasField("timestamp") else None
        if kind is None:
            log.debug("node.alert_skipped", node=self.node_id)
            return
        body = getattr(message, kind)
        instance = None
        if kind in ("instance_alert", "instance_quota_alert", "resource_allocate_alert"):
            instance = wire.instance_key(body.instance, path=f"Alert.{kind}.instance")
        alert = NodeAlert(kind, _alert_text(kind, body), at, instance, _alert_version(body))
        self.alerts.append(alert)
        log.warning(
            "node.alert",
            node=self.node_id,
            kind=kind,
            instance=str(instance) if instance else None,
            version=alert.version or None,
            message=alert.message,
        )


def _alert_text(kind: str, body: object) -> str:
    if kind in ("system_quota_alert", "instance_quota_alert"):
        return f"{body.parameter} {body.value} {body.status}"  # type: ignore[attr-defined]
    if kind == "resource_allocate_alert":
        return f"{body.resource}: {body.message}"  # type: ignore[attr-defined]
    if kind == "core_alert":
        return f"{body.core_component}: {body.message}"  # type: ignore[attr-defined]
    return str(getattr(body, "message", ""))


def _alert_version(body: object) -> str:
    return str(getattr(body, "service_version", ""))


def _largest(values: Iterable[int | None]) -> int | None:
    return max((v for v in values if v), default=None)


# What each case of `SMOutgoingMessages` does on a node, after the first `sm_info`.
_RECEIVERS: dict[str, Callable[[RemoteNode, object], None]] = {
    "sm_info": RemoteNode._on_sm_info,  # type: ignore[dict-item]
    "node_instances_status": RemoteNode._on_node_instances,  # type: ignore[dict-item]
    "update_instances_status": RemoteNode._on_update_status,  # type: ignore[dict-item]
    "node_config_status": RemoteNode._on_config_status,  # type: ignore[dict-item]
    "alert": RemoteNode._on_alert,  # type: ignore[dict-item]
}


def node_config_bodies(config: UnitConfig) -> dict[str, bytes]:
    """Each node's entry of a unit config, as the JSON its SM checks and stores."""
    return {
        n.node.key or "": orjson.dumps(node_config_json(n), option=orjson.OPT_SORT_KEYS)
        for n in config.nodes
    }


class NodeManager(Mapping[str, RemoteNode]):
    """The unit's nodes, by id: those the unit config names, and any whose SM connected.

    A live mapping: a node whose SM connects for the first time appears in it. Node objects
    stay for the manager's lifetime, whatever their streams do.

    Args:
        expected: the node ids the unit config names (see `set_unit_nodes`).
        known: node ids of the unit besides those (the unit PKI's nodes): a unit config may
            name them before their SM ever connected.
        always: node ids expected whatever the unit config names (the main node).
        node_timeout_s: how long an SM may be gone before its node is `error`.
        answer_timeout_s: how long `run_instances` waits for a node's answer.
        clock: monotonic seconds (a fake one in tests).
        on_node_changed: called with a node id after each `NodeInstancesStatus` of that node,
            and when the node goes to `error`; may be set later as an attribute.
    """

    def __init__(
        self,
        expected: Iterable[str] = (),
        *,
        known: Iterable[str] = (),
        always: Iterable[str] = (),
        node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S,
        answer_timeout_s: float = DEFAULT_ANSWER_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        on_node_changed: NodeChanged | None = None,
    ) -> None:
        self.node_timeout_s = node_timeout_s
        self.answer_timeout_s = answer_timeout_s
        self.clock = clock
        self.on_node_changed = on_node_changed
        self._known = frozenset(known)
        self._always = frozenset(always)
        self._nodes: dict[str, RemoteNode] = {}
        self._expected: frozenset[str] = frozenset()
        self._desired: dict[str, NodeState] = {}
        self._cloud_connected = False
        self._unit_config: UnitConfig | None = None
        self._came = asyncio.Event()  # set, then replaced, whenever a node connects
        self.set_unit_nodes(expected)

    # -- Mapping ------------------------------------------------------------------------------

    def __getitem__(self, node_id: str) -> RemoteNode:
        return self._nodes[node_id]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._nodes))

    def __len__(self) -> int:
        return len(self._nodes)

    # -- what the CM tells it -----------------------------------------------------------------

    @property
    def expected(self) -> frozenset[str]:
        """The node ids the unit config names."""
        return self._expected

    def knows(self, node_id: str) -> bool:
        """Whether `node_id` is a node of this unit: provisioned (the unit PKI has it, or the
        installed unit config names it) or its SM connected."""
        return node_id in self._nodes or node_id in self._known

    def set_unit_nodes(self, node_ids: Iterable[str]) -> None:
        """The nodes the unit config names, now: each one is in the mapping from now on (and
        `error` if its SM does not come within the node timeout). A node no longer named is
        dropped if its SM never connected; one that did connect stays."""
        ids = frozenset(node_ids) | self._always
        now = self.clock()
        for node_id in ids - self._nodes.keys():
            self._nodes[node_id] = RemoteNode(node_id, self, now)
        for node_id in [n for n in self._nodes if n not in ids]:
            if not self._nodes[node_id].ever_connected:
                del self._nodes[node_id]
        self._expected = ids

    def set_desired_states(self, states: Mapping[str, str]) -> None:
        """The desired status's node states (node id -> `provisioned` or `paused`); a node not
        named is provisioned."""
        self._desired = {
            node: NodeState.PAUSED if state == NodeState.PAUSED else NodeState.PROVISIONED
            for node, state in states.items()
        }

    def set_cloud_connected(self, connected: bool) -> None:
        """Whether the cloud link is up: every SM is told (`ConnectionStatus`) now, and every
        new stream on connect."""
        if connected == self._cloud_connected:
            return
        self._cloud_connected = connected
        for node in self._nodes.values():
            if node._link is not None:
                node._link.outbox.put(wire.connection_status(connected))

    def use_unit_config(self, config: UnitConfig) -> None:
        """The installed unit config (at start-up): a node that connects gets its entry."""
        self._unit_config = config

    async def apply_unit_config(self, config: UnitConfig) -> ErrorInfo | None:
        """Have every connected node named by `config` check its entry (`CheckNodeConfig`),
        then, when all accept, set it (`SetNodeConfig`). A node not connected (or gone before
        it answered) gets it when its SM connects. Returns why a node refused it (None: set
        everywhere it could be).

        Raises:
            AosError: code timeout when a connected node does not answer in the answer
                timeout (transient: the cycle is tried again, nothing is recorded).
        """
        bodies = node_config_bodies(config)
        targets = [self._nodes[n] for n in sorted(bodies) if n in self._nodes]
        targets = [node for node in targets if node.connected]
        for step in ("check", "set"):
            for node in targets:
                try:
                    status = await node.configure(step, config.version, bodies[node.node_id])
                except AosError as exc:
                    if node.connected:
                        raise
                    log.info(
                        "node.config_deferred",
                        node=node.node_id,
                        error=exc.message,
                        next="its SM gets the unit config when it connects",
                    )
                    continue
                error = status.error_info
                if error is None and status.state == UnitConfigState.FAILED:
                    error = ErrorInfo(int(AosCode.FAILED), 0, f"{step} failed")
                if error is not None:
                    return replace(error, message=f"node {node.node_id}: {error.message}")
        self._unit_config = config
        for node_id, body in bodies.items():
            node = self._nodes.get(node_id)
            link = node._link if node is not None else None
            if node is not None and link is not None and node not in targets:
                link.outbox.put(wire.set_node_config(node_id, config.version, body))
        return None

    # -- what the adapter calls ---------------------------------------------------------------

    def register(
        self, first: sm_pb2.SMOutgoingMessages, outbox: Outbox, *, peer: str = ""
    ) -> NodeLink:
        """A new stream whose first message is `first`, which must be `SMInfo`.

        The node is created if unknown; a stream it already had is closed (its SM restarted).
        The SM is told at once whether the cloud is connected.

        Raises:
            ProtocolError: `first` is not `SMInfo`, or names no node; nothing changes.
        """
        case = first.WhichOneof("SMOutgoingMessage")
        if case != "sm_info":
            raise ProtocolError(
                "SMOutgoingMessages",
                f"the first message of a stream must be sm_info, not {case or 'an unknown case'}",
            )
        info = wire.node_runtimes(first.sm_info)
        node = self._nodes.get(info.node_id)
        if node is None:
            node = self._nodes[info.node_id] = RemoteNode(info.node_id, self, self.clock())
        link = NodeLink(node, outbox, peer)
        node._connected(link, info)
        outbox.put(wire.connection_status(self._cloud_connected))
        config = self._unit_config
        if config is not None:
            body = node_config_bodies(config).get(info.node_id)
            if body is not None and (
                node.config_status is None or node.config_status.version != config.version
            ):
                # A node that was away when the unit config was set gets it now; its answer
                # is kept as its config status.
                outbox.put(wire.set_node_config(info.node_id, config.version, body))
        self._signal_came()
        return link

    def close_all(self, reason: str) -> None:
        """End every stream (the CM is stopping): the nodes are disconnected."""
        for node in self._nodes.values():
            link = node._link
            if link is not None:
                link.outbox.close(reason)
                node._disconnected(link)

    def next_deadline(self) -> float | None:
        """When the next node goes to `error` unless its SM comes (clock time), or None."""
        deadlines = [
            n.since + self.node_timeout_s
            for n in self._nodes.values()
            if not n.connected and not n._error_reported
        ]
        return min(deadlines, default=None)

    def expire(self) -> list[str]:
        """The nodes that went to `error` since the last call; `on_node_changed` is called for
        each, so their instances are placed elsewhere."""
        out = []
        for node_id in self:
            node = self._nodes[node_id]
            if node.timed_out and not node._error_reported:
                node._error_reported = True
                out.append(node_id)
                log.warning(
                    "node.error",
                    node=node_id,
                    gone_s=round(node.gone_for, 1),
                    ever_connected=node.ever_connected,
                    next="reported error; its instances are placed elsewhere where they fit",
                )
                self._notify(node_id)
        return out

    # -- what the launcher asks ---------------------------------------------------------------

    def candidates(self) -> list[str]:
        """The nodes placement may use: connected (so not `error`); paused ones included, as
        placement excludes them by state and the launcher still tells them to stop."""
        return [n for n in self if self._nodes[n].connected]

    def never_connected(self, among: Iterable[str] | None = None) -> list[str]:
        """The nodes the unit config names (or `among`) whose SM has not connected once and
        said what it runs (its first `NodeInstancesStatus`)."""
        ids = self._expected if among is None else among
        return sorted(n for n in ids if n not in self._nodes or not self._nodes[n].ever_reported)

    async def wait_all_connected(
        self, timeout_s: float, among: Iterable[str] | None = None
    ) -> list[str]:
        """Wait until every node the unit config names (or each of `among`) has connected once,
        at most `timeout_s` (AosCore's WaitAllNodesConnected). Returns those that never came
        (empty when all did).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        wanted = None if among is None else tuple(among)
        while missing := self.never_connected(wanted):
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning(
                    "nodes.not_all_connected",
                    missing=missing,
                    timeout_s=timeout_s,
                    next="going on with the nodes that came",
                )
                return missing
            try:
                async with asyncio.timeout(remaining):
                    await self._came.wait()
            except TimeoutError:
                pass
        return []

    def _signal_came(self) -> None:
        """Wake `wait_all_connected`: a node connected or reported."""
        self._came.set()
        self._came = asyncio.Event()

    def _notify(self, node_id: str) -> None:
        callback = self.on_node_changed
        if callback is None:
            return
        try:
            callback(node_id)
        except Exception:
            log.error("node.changed_callback_failed", node=node_id, exc_info=True)
