"""The SM's behaviour on its link to the CM: `SmNode`, the link's `LinkHandler`.

What it does (docs/sm-protocol.md):

- On a new stream it sends `SMInfo`, then `NodeInstancesStatus` with every instance it runs.
- On `UpdateInstances` it makes the node run exactly the instances to start: it fetches each
  distinct manifest through the blob cache, hands the specs to the manager, and answers
  `UpdateInstancesStatus` (updates.py decides). A fetch that may succeed later is tried again
  with backoff, without the CM.
- Every second it reads the manager's statuses; when what it would report changed, it sends
  `NodeInstancesStatus`, and an `InstanceAlert` when an instance starts failing or is held in a
  new restart backoff (reporter.py decides).
- It answers `GetNodeConfigStatus`, `CheckNodeConfig` and `SetNodeConfig` from its node config
  store (nodeconfig.py), one request at a time, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Protocol

from ..backoff import Backoff
from ..errors import AosError, ProtocolError
from ..logs import get_logger
from ..nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus, wire
from ..nodes.proto import sm_pb2
from ..protocol import ErrorInfo, UnitConfigStatus
from .nodeconfig import NodeConfigStore
from .reporter import Meta, Reporter, compose
from .updates import UpdatePlan, answer_for, failed_status, plan_update, refusal, refused_answer

log = get_logger("sm.node")

_NODE_CONFIG_CASES = ("get_node_config_status", "check_node_config", "set_node_config")

POLL_S = 1.0
"""How often the node reads its instances' statuses and compares them with the last report."""


class Manager(Protocol):
    """The part of `DockerServiceManager` the node uses."""

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]: ...

    async def instance_statuses(self) -> list[InstanceStatus]: ...

    async def collect_images(self, keep: Sequence[str]) -> list[str]: ...


class Images(Protocol):
    """The part of `BlobCache` the node uses."""

    async def ensure(self, manifest_digest: str) -> ImageLayout: ...

    def collect(self, keep_digests: Sequence[str]) -> list[str]: ...


class Sender(Protocol):
    """The part of `SmLink` the node uses."""

    def send(self, message: sm_pb2.SMOutgoingMessages, *, stream: int | None = None) -> bool: ...


class SmNode:
    """The SM's behaviour on its link (the link's `LinkHandler`).

    Args:
        node_id: this node.
        manager: runs the instances.
        images: fetches their images from the CM.
        sm_info: the `SMInfo` message that opens every stream.
        previous: the specs the manager runs since its last start (its state file), so that
            reports name their manifests before the CM speaks.
        poll_s: how often statuses are read and compared.
        retry: the backoff between attempts at an image that failed for a transient reason.
        node_config: this node's node config; None keeps one in memory only.
    """

    def __init__(
        self,
        node_id: str,
        manager: Manager,
        images: Images,
        sm_info: sm_pb2.SMOutgoingMessages,
        *,
        previous: Mapping[InstanceKey, InstanceSpec] | None = None,
        poll_s: float = POLL_S,
        retry: Backoff | None = None,
        node_config: NodeConfigStore | None = None,
    ) -> None:
        self.node_id = node_id
        self.link: Sender | None = None
        self._manager = manager
        self._images = images
        self._sm_info = sm_info
        self._poll_s = poll_s
        self._retry = retry or Backoff(initial=2.0, cap=60.0)
        self._retry_at: float | None = None
        self._specs: dict[InstanceKey, InstanceSpec] = dict(previous or {})
        self._meta: dict[InstanceKey, Meta] = {
            k: Meta(s.item_type, s.image.manifest_digest) for k, s in self._specs.items()
        }
        self._failed: dict[InstanceKey, InstanceStatus] = {}
        self._requests: list[wire.InstanceRequest] | None = None
        self._updates: asyncio.Queue[tuple[sm_pb2.UpdateInstances, int]] = asyncio.Queue()
        self.node_config = node_config or NodeConfigStore(node_id, None)
        # Node config requests, answered one at a time in the order they came.
        self._configs: asyncio.Queue[tuple[str, sm_pb2.SMIncomingMessages, int]] = asyncio.Queue()
        self._reporter = Reporter()
        self._lock = asyncio.Lock()  # one report or answer at a time, in order
        self._poll_error: str | None = None
        self.applied = 0  # updates and retries applied (for tests)

    # -- the link's handler ---------------------------------------------------------------------

    async def hello(self) -> list[sm_pb2.SMOutgoingMessages]:
        """`SMInfo`, then every instance this node runs."""
        async with self._lock:
            reports = compose(await self._manager.instance_statuses(), self._failed)
            self._reporter.mark_sent(reports, self._meta)
            log.debug(
                "link.hello",
                node=self.node_id,
                instances=len(reports),
                next="registering with the CM",
            )
            return [self._sm_info, self._status_message(reports)]

    def received(self, message: sm_pb2.SMIncomingMessages, stream: int) -> None:
        case = message.WhichOneof("SMIncomingMessage")
        if case == "update_instances":
            self._updates.put_nowait((message.update_instances, stream))
        elif case == "connection_status":
            connected = message.connection_status.cloud_status == sm_pb2.CONNECTED
            log.info("cm.cloud_status", node=self.node_id, cloud_connected=connected)
        elif case in _NODE_CONFIG_CASES:
            self._configs.put_nowait((case, message, stream))
        else:
            log.debug("link.message_skipped", node=self.node_id, case=case)

    # -- running --------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Apply updates, answer node config requests and report changes until cancelled."""
        await asyncio.gather(self._poll_loop(), self._update_loop(), self._config_loop())

    async def _config_loop(self) -> None:
        while True:
            case, message, stream = await self._configs.get()
            try:
                status = await self._node_config(case, message)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: the SM must go on serving the CM
                log.error("node_config.crashed", node=self.node_id, request=case, exc_info=True)
                continue
            self._send(wire.node_config_status(status), stream)

    async def _node_config(self, case: str, message: sm_pb2.SMIncomingMessages) -> UnitConfigStatus:
        """The answer to one node config request (a set is written off the event loop)."""
        store = self.node_config
        if case == "get_node_config_status":
            return store.status()
        request = wire.node_config_request(getattr(message, case))
        if case == "check_node_config":
            status = store.check(request.config_json, request.version)
        else:
            status = await asyncio.to_thread(store.set, request.config_json, request.version)
        error = status.error_info
        fields = {"node": self.node_id, "request": case, "version": request.version}
        if error is not None:
            log.warning(
                "node_config.refused",
                **fields,
                error=error.message,
                next=f"answered {status.state}, with the error",
            )
        else:
            log.info("node_config.accepted", **fields, state=str(status.state))
        return status

    async def report(self) -> None:
        """Read the statuses; send `NodeInstancesStatus` if they changed, and the alerts."""
        async with self._lock:
            reports = compose(await self._manager.instance_statuses(), self._failed)
            alerts = self._reporter.alerts(reports)
            changed = self._reporter.changed(reports, self._meta)
            if changed and self._send(self._status_message(reports), None):
                self._reporter.mark_sent(reports, self._meta)
                log.info(
                    "status.sent",
                    node=self.node_id,
                    instances={str(s.key): str(s.state) for s in reports},
                )
            for status in alerts:
                assert status.error is not None
                sent = self._send(
                    wire.instance_alert(
                        status.key,
                        status.version,
                        status.error.message,
                        at=datetime.now(UTC),
                        item_type=self._meta.get(status.key, Meta()).item_type,
                    ),
                    None,
                )
                log.warning(
                    "instance.alert",
                    node=self.node_id,
                    instance=str(status.key),
                    version=status.version,
                    message=status.error.message,
                    sent=sent,
                )

    async def _poll_loop(self) -> None:
        # Read again after the poll interval, or as soon as the manager's supervisor converged
        # (an instance just became active: the CM hears it without a poll's lag). Cleared
        # before reading, so a change while reading is not missed.
        changed: asyncio.Event | None = getattr(self._manager, "changed", None)
        while True:
            if changed is not None:
                changed.clear()
            try:
                await self.report()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine away: report again when it is back
                text = f"{type(exc).__name__}: {exc}"
                if text != self._poll_error:
                    log.warning(
                        "status.unreadable",
                        node=self.node_id,
                        error=text,
                        next=f"trying again every {self._poll_s:g} s",
                    )
                self._poll_error = text
            else:
                if self._poll_error is not None:
                    log.info("status.readable", node=self.node_id)
                    self._poll_error = None
            if changed is None:
                await asyncio.sleep(self._poll_s)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._poll_s)

    async def _update_loop(self) -> None:
        while True:
            item = await self._next_update()
            try:
                if item is not None:
                    await self._handle(*item)
                elif self._requests is not None:
                    log.info("update.retry", node=self.node_id, attempt=self._retry.attempts)
                    await self._apply(self._requests, None)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: the SM must go on serving the CM
                log.error(
                    "update.crashed",
                    node=self.node_id,
                    exc_info=True,
                    next="waiting for the CM's next UpdateInstances",
                )

    async def _next_update(self) -> tuple[sm_pb2.UpdateInstances, int] | None:
        """The next update from the CM, or None when a retry is due first."""
        if not self._updates.empty():
            return self._updates.get_nowait()
        if self._retry_at is None:
            return await self._updates.get()
        remaining = self._retry_at - asyncio.get_running_loop().time()
        try:
            return await asyncio.wait_for(self._updates.get(), max(0.0, remaining))
        except TimeoutError:
            self._retry_at = None
            return None

    async def _handle(self, update: sm_pb2.UpdateInstances, stream: int) -> None:
        try:
            requests, stop = wire.update_request(update)
        except ProtocolError as exc:
            log.warning(
                "update.refused",
                node=self.node_id,
                reason=exc.message,
                next="nothing changed; the instances it names are answered failed",
            )
            answer = refused_answer(update, self.node_id, exc)
            async with self._lock:
                self._send(wire.update_instances_status(answer), stream)
            return
        log.info(
            "update.received",
            node=self.node_id,
            stream=stream,
            start=[str(r.key) for r in requests],
            stop=[str(k) for k in stop],
            next="fetching images, then running exactly the start list",
        )
        self._retry.reset()
        self._retry_at = None
        await self._apply(requests, stream)

    async def _apply(self, requests: Sequence[wire.InstanceRequest], stream: int | None) -> None:
        """Fetch the images of `requests`, run them, answer on `stream` (None: a retry, whose
        changes the next report carries)."""
        self._requests = list(requests)
        digests = list(dict.fromkeys(r.manifest_digest for r in requests if refusal(r) is None))
        fetched = await asyncio.gather(*(self._ensure(d) for d in digests))
        plan = plan_update(
            self.node_id, requests, dict(zip(digests, fetched, strict=True)), self._specs
        )
        retry, ran = plan.transient, True
        async with self._lock:
            self._meta, self._failed = dict(plan.meta), dict(plan.failed)
            try:
                statuses = await self._manager.run_instances(plan.specs)
            except Exception as exc:  # the engine away, the state file unwritable
                retry, ran = True, False
                error = ErrorInfo.from_exception(exc)
                log.error(
                    "update.failed",
                    node=self.node_id,
                    error=error.message,
                    next="every instance asked for is answered failed; trying again later",
                )
                failed = {r.key: failed_status(self.node_id, r, error) for r in requests}
                answer = answer_for(compose([], failed), plan.order, self.node_id)
            else:
                self._specs = {s.key: s for s in plan.specs}
                answer = answer_for(compose(statuses, self._failed), plan.order, self.node_id)
            self.applied += 1
            if stream is not None:
                message = self._status_message(answer, update=True)
                if self._send(message, stream):
                    self._reporter.mark_sent(answer, self._meta)
                log.info(
                    "update.answered",
                    node=self.node_id,
                    stream=stream,
                    instances={str(s.key): str(s.state) for s in answer},
                    failed=[str(k) for k in plan.failed] or None,
                )
        if retry:
            delay = self._retry.next()
            self._retry_at = asyncio.get_running_loop().time() + delay
            log.warning(
                "update.incomplete",
                node=self.node_id,
                failed=[str(k) for k in self._failed] or None,
                next=f"trying again in {delay:.1f} s",
            )
        else:
            self._retry.reset()
        if ran:
            await self._collect(plan)

    async def _ensure(self, digest: str) -> ImageLayout | AosError:
        try:
            return await self._images.ensure(digest)
        except AosError as exc:
            log.warning(
                "image.unavailable",
                node=self.node_id,
                manifest=digest,
                code=exc.code.name,
                error=exc.message,
                next="its instances are answered failed; the others go on",
            )
            return exc
        except Exception as exc:
            log.error("image.failed", node=self.node_id, manifest=digest, exc_info=True)
            return AosError(f"manifest {digest}: {type(exc).__name__}: {exc}")

    async def _collect(self, plan: UpdatePlan) -> None:
        """Drop the blobs and images no instance of this node needs any more (best effort)."""
        keep = [s.image.manifest_digest for s in plan.specs]
        keep += [m.manifest_digest for m in plan.meta.values()]
        try:
            self._images.collect(keep)
            await self._manager.collect_images(())
        except Exception as exc:
            log.warning(
                "collect.failed",
                node=self.node_id,
                error=f"{type(exc).__name__}: {exc}",
                next="left for the next update",
            )

    def _send(self, message: sm_pb2.SMOutgoingMessages, stream: int | None) -> bool:
        return self.link is not None and self.link.send(message, stream=stream)

    def _status_message(
        self, statuses: Sequence[InstanceStatus], *, update: bool = False
    ) -> sm_pb2.SMOutgoingMessages:
        digests = {k: m.manifest_digest for k, m in self._meta.items()}
        types = {k: m.item_type for k, m in self._meta.items()}
        make = wire.update_instances_status if update else wire.node_instances_status
        return make(statuses, manifest_digests=digests, item_types=types)
