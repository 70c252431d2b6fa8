"""`aoscore sm`: one node's service manager as its own process, serving its CM over the SM link.

`run_sm` wires the node's Docker engine (`DockerRuntime`), the manager that runs instances on it
(`DockerServiceManager`, its state under DATA_DIR/sm), the blob cache that fetches their images
from the CM's blob server (`BlobCache` on a `BlobStore` in DATA_DIR) and the link (`SmLink`),
and runs until SIGINT or SIGTERM. Shutdown closes the link and leaves every container running:
a restarted SM finds them by their labels and reports them.

`SmNode` is what the SM does on the link (docs/sm-protocol.md):

- On a new stream it sends `SMInfo`, then `NodeInstancesStatus` with every instance it runs.
- On `UpdateInstances` it makes the node run exactly the instances to start: it fetches each
  distinct manifest through the blob cache, hands the specs to the manager, and answers
  `UpdateInstancesStatus`. An instance whose image cannot be fetched, or that asks for a runtime
  this node lacks, is answered failed and the others go on; whatever that instance ran before
  keeps running (the CM sees it failed at the version it asked for). A fetch that may succeed
  later is tried again with backoff, without the CM.
- Every second it reads the manager's statuses; when what it would report changed (a state, a
  version, an error, not a countdown), it sends `NodeInstancesStatus`, and an `InstanceAlert`
  when an instance starts failing or is held in a new restart backoff.

The decisions are pure functions at the top (`plan_update`, `compose`, `Reporter`,
`sm_info_message`), tested without engine or sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from ..backoff import Backoff
from ..errors import AosCode, AosError, ConfigError, ProtocolError, Retry, classify_code
from ..iam.tls import TlsFiles, check_insecure_host
from ..logs import get_logger
from ..nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus, wire
from ..nodes.proto import sm_pb2
from ..protocol import (
    ArchInfo,
    ErrorInfo,
    Identity,
    InstanceState,
    OsInfo,
    RuntimeInfo,
    UnitConfigState,
    UnitConfigStatus,
)
from .health import CRASH_LOOP, IMAGE_PULL, START_FAILURE
from .types import Platform

log = get_logger("sm.service")

DEFAULT_SYSTEM_ID = "aoscore"
"""The unit label of an SM not told its unit's systemId."""

POLL_S = 1.0
SHUTDOWN_GRACE_S = 5.0
"""How long a stopping SM waits for its link to end its stream."""
ALERT_REASONS = (START_FAILURE, CRASH_LOOP, IMAGE_PULL)
_COUNTDOWN = re.compile(r"; next start in (\d+) s")


# -- pure: what an UpdateInstances becomes -------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """What a report says of an instance beyond its status: its item type and manifest."""

    item_type: str = "service"
    manifest_digest: str = ""


@dataclass(frozen=True)
class UpdatePlan:
    """What to do with one `UpdateInstances`.

    Attributes:
        specs: what the manager must run (an instance that cannot be prepared keeps the spec it
            ran before, if any, so its container keeps serving).
        failed: instances reported failed whatever the manager says of them.
        meta: item type and manifest digest of every instance asked for.
        order: the instances asked for, in the CM's order (the answer's).
        transient: some failure may go away by itself: worth trying again.
    """

    specs: tuple[InstanceSpec, ...]
    failed: Mapping[InstanceKey, InstanceStatus]
    meta: Mapping[InstanceKey, Meta]
    order: tuple[InstanceKey, ...]
    transient: bool


def refusal(request: wire.InstanceRequest) -> ErrorInfo | None:
    """Why this node cannot run `request` at all, or None: our SM offers one runtime, `docker`
    (an empty runtime id means the default)."""
    if request.runtime_id not in ("", wire.DOCKER_RUNTIME):
        return ErrorInfo(
            int(AosCode.NOT_SUPPORTED),
            0,
            f"{START_FAILURE}: runtime {request.runtime_id!r} is not on this node "
            f"(it offers {wire.DOCKER_RUNTIME!r})",
        )
    return None


def failed_status(node_id: str, request: wire.InstanceRequest, error: ErrorInfo) -> InstanceStatus:
    """Instance `request` reported failed with `error`, at the version the CM asked for."""
    return InstanceStatus(
        request.key,
        request.version,
        node_id,
        InstanceState.FAILED,
        error,
        runtime=request.runtime_id or wire.DOCKER_RUNTIME,
    )


def image_error(exc: AosError) -> ErrorInfo:
    """The errorInfo of an image that cannot be fetched (ErrImagePull, the blob error's code)."""
    return ErrorInfo(int(exc.code), 0, f"{IMAGE_PULL}: {exc.message}")


def plan_update(
    node_id: str,
    requests: Sequence[wire.InstanceRequest],
    images: Mapping[str, ImageLayout | AosError],
    previous: Mapping[InstanceKey, InstanceSpec],
) -> UpdatePlan:
    """The specs and failures for `requests`, given each manifest's layout or fetch error.

    Args:
        node_id: this node.
        requests: the instances to start, in the CM's order; a key named twice counts once
            (the first).
        images: manifest digest -> its layout, or why it cannot be had. A request whose digest
            is missing here is failed as not fetched.
        previous: the specs the manager runs now, by key.
    """
    specs: dict[InstanceKey, InstanceSpec] = {}
    failed: dict[InstanceKey, InstanceStatus] = {}
    meta: dict[InstanceKey, Meta] = {}
    transient = False
    for request in requests:
        key = request.key
        if key in meta:
            continue
        meta[key] = Meta(request.item_type, request.manifest_digest)
        error = refusal(request)
        if error is None:
            image = images.get(request.manifest_digest)
            if isinstance(image, ImageLayout):
                specs[key] = request.spec(image)
                continue
            if image is None:
                image = AosError(f"manifest {request.manifest_digest} was not fetched")
            error = image_error(image)
            transient = transient or classify_code(error.aos_code) is Retry.TRANSIENT
        failed[key] = failed_status(node_id, request, error)
        if key in previous:
            specs[key] = previous[key]  # what ran keeps running
    return UpdatePlan(tuple(specs.values()), failed, meta, tuple(meta), transient)


def compose(
    statuses: Sequence[InstanceStatus], failed: Mapping[InstanceKey, InstanceStatus]
) -> list[InstanceStatus]:
    """What the node reports: the manager's statuses, those in `failed` replaced, by key."""
    merged = {s.key: s for s in statuses}
    merged.update(failed)
    return [merged[key] for key in sorted(merged)]


def answer_for(
    reports: Sequence[InstanceStatus], order: Sequence[InstanceKey], node_id: str
) -> list[InstanceStatus]:
    """The `UpdateInstancesStatus` of the instances asked for, in the CM's order; one the
    manager did not report is failed (it never is, unless the engine lost it meanwhile)."""
    by_key = {s.key: s for s in reports}
    missing = ErrorInfo(int(AosCode.NOT_FOUND), 0, "not reported by the runtime")
    return [
        by_key.get(key) or InstanceStatus(key, "", node_id, InstanceState.FAILED, missing)
        for key in order
    ]


def refused_answer(
    update: sm_pb2.UpdateInstances, node_id: str, error: ProtocolError
) -> list[InstanceStatus]:
    """The answer to an `UpdateInstances` refused whole: every start instance whose identity
    reads, failed with the reason (nothing was changed)."""
    info = ErrorInfo(int(error.code), 0, f"UpdateInstances refused: {error.message}")
    out = []
    for entry in update.start_instances:
        with contextlib.suppress(ProtocolError):
            key = wire.instance_key(entry.instance)
            out.append(InstanceStatus(key, entry.version, node_id, InstanceState.FAILED, info))
    return out


# -- pure: what to report, and when --------------------------------------------------------------


def steady(message: str) -> str:
    """An error message without its countdown (`; next start in 7 s`), which changes every
    second and is no news."""
    return _COUNTDOWN.sub("", message)


def countdown(message: str) -> int | None:
    """The seconds until the next start that an error message names, if any."""
    found = _COUNTDOWN.search(message)
    return int(found.group(1)) if found else None


def fingerprint(
    statuses: Sequence[InstanceStatus], meta: Mapping[InstanceKey, Meta]
) -> tuple[Any, ...]:
    """What must differ for a new `NodeInstancesStatus` to be worth sending."""
    out = []
    for s in sorted(statuses, key=lambda s: s.key):
        error = s.error
        err = (error.aos_code, error.exit_code, steady(error.message)) if error else None
        out.append((s.key, s.version, str(s.state), s.runtime, meta.get(s.key), err))
    return tuple(out)


def alert_worthy(before: InstanceStatus | None, now: InstanceStatus) -> bool:
    """Whether `now` is news for an `InstanceAlert`: the instance started failing (StartFailure,
    CrashLoopBackOff, ErrImagePull), fails otherwise than before, or was held in a new restart
    backoff (a countdown appeared or grew: it only shrinks while one backoff runs)."""
    error = now.error
    if error is None or not error.message.startswith(ALERT_REASONS):
        return False
    old = before.error if before is not None else None
    if old is None or before is None or before.version != now.version:
        return True
    if (old.aos_code, old.exit_code, steady(old.message)) != (
        error.aos_code,
        error.exit_code,
        steady(error.message),
    ):
        return True
    then, left = countdown(old.message), countdown(error.message)
    return left is not None and (then is None or left > then)


@dataclass
class Reporter:
    """What the CM was last told (`sent`), and what was last seen (for alerts)."""

    sent: tuple[Any, ...] | None = None
    seen: dict[InstanceKey, InstanceStatus] = field(default_factory=dict)

    def changed(self, reports: Sequence[InstanceStatus], meta: Mapping[InstanceKey, Meta]) -> bool:
        return fingerprint(reports, meta) != self.sent

    def mark_sent(
        self, reports: Sequence[InstanceStatus], meta: Mapping[InstanceKey, Meta]
    ) -> None:
        self.sent = fingerprint(reports, meta)

    def alerts(self, reports: Sequence[InstanceStatus]) -> list[InstanceStatus]:
        """The statuses worth an alert since the last call; remembers `reports`."""
        out = [s for s in reports if alert_worthy(self.seen.get(s.key), s)]
        self.seen = {s.key: s for s in reports}
        return out


# -- pure: the node as SMInfo says it ------------------------------------------------------------


@dataclass(frozen=True)
class NodeResources:
    """What the node offers, for SMInfo; None is "not given" (placement reads it as unlimited).

    Attributes:
        total_ram: the node's RAM in bytes (by default what its engine reports).
        allowed_ram: the part of it instances may book.
        max_dmips: the node's CPU in DMIPS.
        allowed_dmips: the part of it instances may book.
        max_instances: at most this many instances (None: no limit).
    """

    total_ram: int | None = None
    allowed_ram: int | None = None
    max_dmips: int | None = None
    allowed_dmips: int | None = None
    max_instances: int | None = None


def sm_info_message(
    node_id: str, platform: Platform, resources: NodeResources, os_version: str | None = None
) -> sm_pb2.SMOutgoingMessages:
    """The `SMInfo` of this node: one runtime, `docker`, on the engine's platform; no shared
    resources yet."""
    runtime = RuntimeInfo(
        identity=Identity(codename=wire.DOCKER_RUNTIME),
        runtime_type=wire.DOCKER_RUNTIME,
        arch_info=ArchInfo(platform.architecture, platform.variant or None),
        os_info=OsInfo(platform.os, os_version or None),
        max_dmips=resources.max_dmips,
        allowed_dmips=resources.allowed_dmips,
        total_ram=resources.total_ram,
        allowed_ram=resources.allowed_ram,
        max_instances=resources.max_instances,
    )
    return wire.sm_info(node_id, [runtime])


# -- the node on its link ------------------------------------------------------------------------


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
        elif case == "get_node_config_status":
            status = UnitConfigStatus("", UnitConfigState.ABSENT)
            self._send(wire.node_config_status(status), stream)
        elif case in ("check_node_config", "set_node_config"):
            body = getattr(message, case)
            error = ErrorInfo(
                int(AosCode.NOT_SUPPORTED), 0, "this SM does not apply node configs yet"
            )
            status = UnitConfigStatus(body.version, UnitConfigState.FAILED, error)
            self._send(wire.node_config_status(status), stream)
            log.warning(
                "node_config.refused",
                node=self.node_id,
                request=case,
                version=body.version,
                next="answered failed (notSupported)",
            )
        else:
            log.debug("link.message_skipped", node=self.node_id, case=case)

    # -- running --------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Apply updates and report changes until cancelled."""
        await asyncio.gather(self._poll_loop(), self._update_loop())

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
        while True:
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
            await asyncio.sleep(self._poll_s)

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


# -- the process ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmConfig:
    """What `aoscore sm` needs.

    Attributes:
        node_id: this node's id (the common name of its certificate with the unit PKI).
        cm: the CM's SM link address, HOST:PORT.
        data_dir: the SM's own folder: its blob cache, its state, its lock.
        system_id: the unit's systemId, the `io.aoscore.unit` label of its containers.
        docker_url: the engine's address; None reads DOCKER_HOST and friends.
        tls: the unit's CA and this node's certificate and key (mutual TLS).
        insecure: plaintext gRPC and HTTP instead; only with a loopback CM address.
        resources: what SMInfo says the node offers (RAM defaults to the engine's).
        download_parallel: blobs fetched at once.
        download_timeout_s: seconds without a byte before a blob transfer is retried.
        poll_s: how often statuses are read and compared.
    """

    node_id: str
    cm: str
    data_dir: Path
    system_id: str = DEFAULT_SYSTEM_ID
    docker_url: str | None = None
    tls: TlsFiles | None = None
    insecure: bool = False
    resources: NodeResources = NodeResources()
    download_parallel: int = 4
    download_timeout_s: float = 30.0
    poll_s: float = POLL_S

    def check(self) -> None:
        """Raises ConfigError: a malformed CM address, plaintext off loopback, or neither TLS
        files nor insecure (or both)."""
        from .link import parse_target

        host, _ = parse_target(self.cm)
        if self.insecure and self.tls is not None:
            raise ConfigError("give --ca/--cert/--key or --insecure, not both")
        if self.insecure:
            check_insecure_host(host, f"--cm {self.cm}")
        elif self.tls is None:
            raise ConfigError(
                "the SM link needs the unit's CA and this node's certificate and key "
                "(--ca/--cert/--key); plaintext only with --insecure on a loopback address"
            )


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def _connect_engine(url: str | None, stop: asyncio.Event) -> Any:
    """The Docker engine once it answers; None if `stop` came first."""
    from .docker_runtime import DockerRuntime

    backoff = Backoff(initial=1.0, cap=15.0)
    while not stop.is_set():
        try:
            runtime = await asyncio.to_thread(DockerRuntime, url)
            await asyncio.to_thread(runtime.ping)
            return runtime
        except AosError as exc:
            delay = backoff.next()
            log.warning(
                "engine.unavailable", error=exc.message, next=f"trying again in {delay:.1f} s"
            )
            await _wait(stop, delay)
    return None


async def run_sm(config: SmConfig, stop: asyncio.Event | None = None) -> None:
    """Run the SM until `stop` is set (by default: until SIGINT or SIGTERM).

    Raises:
        ConfigError: a bad address, plaintext off loopback, TLS files missing or wrong.
        StorageError: the data dir is used by another process or not writable.
    """
    from ..blobs.download import DownloadPolicy, blob_client
    from ..blobs.store import BlobStore
    from ..iam.tls import grpc_channel_credentials, unit_client_context
    from ..storage.lock import DataDirLock
    from .blobcache import BlobCache
    from .link import SmLink
    from .manager import DockerServiceManager
    from .state import FILE_NAME, SmState

    config.check()
    if config.tls is not None:
        files = config.tls
        credentials = grpc_channel_credentials(files.ca, files.cert, files.key)
        tls = unit_client_context(files)
    else:
        credentials = None
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # plain HTTP only: no https URL verifies
    if stop is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

    lock = DataDirLock.acquire(config.data_dir)
    started = time.monotonic()
    log.info(
        "sm.start",
        node=config.node_id,
        cm=config.cm,
        system_id=config.system_id,
        data_dir=str(config.data_dir),
        tls=config.tls is not None,
        previous_pid=lock.previous_pid,
    )
    runtime = None
    try:
        runtime = await _connect_engine(config.docker_url, stop)
        if runtime is None:
            return
        platform = await asyncio.to_thread(runtime.platform)
        info = await asyncio.to_thread(runtime.client.info)
        resources = config.resources
        if resources.total_ram is None and info.get("MemTotal"):
            resources = NodeResources(
                int(info["MemTotal"]),
                resources.allowed_ram,
                resources.max_dmips,
                resources.allowed_dmips,
                resources.max_instances,
            )
        sm_info = sm_info_message(config.node_id, platform, resources, info.get("KernelVersion"))
        policy = DownloadPolicy(parallel=config.download_parallel)
        store = BlobStore(config.data_dir)
        state_dir = config.data_dir / "sm"
        previous = SmState(state_dir / FILE_NAME).wanted or {}
        manager = DockerServiceManager(
            config.node_id, config.system_id, runtime, store.path, state_dir=state_dir
        )
        async with blob_client(policy, config.download_timeout_s, tls) as http:
            link = SmLink(config.cm, credentials=credentials)
            cache = BlobCache(store, link, http, policy)
            node = SmNode(config.node_id, manager, cache, sm_info, previous=previous)
            node.link = link
            log.info(
                "sm.ready",
                node=config.node_id,
                platform=str(platform),
                total_ram=resources.total_ram,
                instances=len(previous),
                next=f"dialling the CM at {config.cm}",
            )
            tasks = [
                asyncio.create_task(link.run(node), name="sm-link"),
                asyncio.create_task(node.serve(), name="sm-node"),
            ]
            stopping = asyncio.create_task(stop.wait(), name="sm-stop")
            try:
                done, _ = await asyncio.wait(
                    [*tasks, stopping], return_when=asyncio.FIRST_COMPLETED
                )
                for task in tasks:
                    if task in done and not task.cancelled():
                        task.result()  # a loop that ended raises here (they run for ever)
            finally:
                # The link first, and let it end its stream itself (the CM sees this SM go
                # away at once), then whatever the node was doing.
                await link.close()
                await asyncio.wait(tasks[:1], timeout=SHUTDOWN_GRACE_S)
                for task in (*tasks, stopping):
                    task.cancel()
                await asyncio.gather(*tasks, stopping, return_exceptions=True)
                await manager.aclose()
    finally:
        if runtime is not None:
            runtime.close()
        lock.release()
        log.info(
            "sm.stopped",
            node=config.node_id,
            seconds=round(time.monotonic() - started, 3),
            next="containers keep running; a restarted SM reports them",
        )
