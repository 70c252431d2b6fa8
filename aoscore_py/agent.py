"""The agent process (the CM of the main node): wiring, start, and clean shutdown.

Every node's service manager, the main node's too, is its own process (`aoscore sm`) on the SM
link (AosCore's servicemanager.v5 over gRPC, mutual TLS with the unit PKI by default): the agent
serves it (`--sm-listen`), serves the verified blob store to the SMs, and starts the main node's
SM as a child (`localsm`) unless told not to. A node that connects, goes away past its node
timeout, or reports something else than it was told makes the launcher place again
(`Launcher.reconcile`), outside the update cycle.

Shutdown on SIGINT or SIGTERM: stop taking messages, cancel the running phase at its next
await (it stays committed, the journal notes the interruption), close the cloud link, the SM
link and the blob server, stop the local SM, exit 0. Containers keep running; the next start
resumes.

Start-up: the data dir is locked for the life of the process (a second agent on it exits 1
naming the holder's pid) and checked writable (a read-only or unwritable one exits 1 naming it);
a damaged store, or one that lost state, is moved aside and the agent starts on a new one
(storage/database.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509

from statemachine import UPDATE_CYCLE, crashpoint

from . import logs
from .admin.auth import load_or_create_token
from .admin.listen import SOCKET_FILE, parse_admin_listen
from .admin.metrics import AgentMetrics
from .admin.routes import Sources, gauges
from .admin.server import AdminServer, make_app
from .blobs.download import DownloadPolicy, blob_client
from .blobs.store import BlobStore
from .cm.communication.crashpoints import HEALTH_STORED
from .cm.communication.health import MAX_CHANGES, Health, HealthChange, ReconnectPolicy
from .cm.communication.link import CloudLink
from .cm.communication.outbox import Outbox, OutboxLimits
from .cm.communication.poll import PollSettings, Transport
from .cm.communication.targets import StaticTargets, TargetSource
from .cm.imagemanager.blobserver import BlobServer
from .cm.imagemanager.manager import DAY_S, ImageManager, ImagePolicy
from .cm.launcher.launcher import Launcher
from .cm.launcher.nodemanager import DEFAULT_NODE_TIMEOUT_S, NodeManager
from .cm.launcher.smserver import SMServer, split_address
from .cm.updatemanager.handler import MACHINE, DesiredStatusHandler
from .cm.updatemanager.unitstatus import DEFAULT_DEBOUNCE_S, UnitStatusHandler
from .crypto.signing import load_pem_certificates
from .errors import AosCode, AosError, ConfigError, LinkError
from .iam.tls import client_context, grpc_server_credentials
from .iam.unitpki import DEFAULT_CM_NAMES, UnitPki, init_unit_pki, load_unit_pki
from .localsm import LocalSM
from .logs import get_logger
from .protocol import DesiredStatus, Message, UnitConfig, parse_message
from .storage import Storage
from .storage.lock import DataDirLock

log = get_logger("agent")

LOCAL_SM_WAIT_S = 10.0
"""How long the agent waits for its own node's SM before it dials the cloud."""

POLL_ETAG_FILE = "poll-etag.json"
"""The ETag of the last desired status the unit acked by poll, in the data dir."""

RECONCILE_DELAY_S = 0.2
"""How long a node change waits before placing again, so a burst of reports is one placement."""


@dataclass(frozen=True)
class AgentConfig:
    """What an agent needs to run."""

    cloud_url: str
    system_id: str
    data_dir: Path
    node_id: str = "node-1"
    docker_url: str | None = None
    active_timeout_s: float = 600.0
    trusted_ca: Path | None = None
    allow_unsigned: bool = False
    removed_ttl_s: float = 30 * DAY_S
    download_parallel: int = 4
    download_buffer_bytes: int = DownloadPolicy.receive_buffer_bytes
    download_timeout_s: float = 30.0
    sm_listen: str = "127.0.0.1:8093"
    blob_port: int = 0
    blob_advertise: str | None = None
    """HOST:PORT put in the blob URLs SMs get (a proxy or NAT in between); None: the server's."""
    insecure: bool = False
    unit_pki: Path | None = None
    local_sm: bool = True
    node_timeout_s: float = DEFAULT_NODE_TIMEOUT_S
    local_sm_args: tuple[str, ...] = ()
    reconnect: ReconnectPolicy = field(default_factory=ReconnectPolicy)
    outbox: OutboxLimits = field(default_factory=OutboxLimits)
    status_debounce_s: float = DEFAULT_DEBOUNCE_S
    keepalive_s: float = 20.0
    targets: TargetSource | None = None
    """Where to dial (discovery); None: the fixed `cloud_url`."""
    transport: Transport = Transport.AUTO
    poll_url: str | None = None
    """The cloud's HTTPS base for polling (beside discovery); None: WebSocket only."""
    poll_after_s: float = 300.0
    poll_interval_s: float = 60.0
    admin: bool = True
    """Serve the local admin API on `<data dir>/admin.sock`."""
    admin_listen: str | None = None
    """A loopback HOST:PORT to serve the admin API on too (refused elsewhere: no TLS)."""

    def poll(self) -> PollSettings | None:
        """How the link polls: None without a poll URL or with `--transport ws`."""
        if self.poll_url is None or self.transport is Transport.WS:
            return None
        return PollSettings(
            self.poll_url,
            self.data_dir / POLL_ETAG_FILE,
            self.transport,
            self.poll_after_s,
            self.poll_interval_s,
        )

    def pki(self) -> UnitPki | None:
        """The unit PKI of the SM link: the folder given, else `<data dir>/pki`, made (or
        completed, for this node and the listen host) when it is the default one. None with
        `insecure`.

        Raises:
            ConfigError: the folder given is not a complete unit PKI (the message says what
                is missing), or the listen address is malformed.
        """
        if self.insecure:
            return None
        if self.unit_pki is not None:
            return load_unit_pki(self.unit_pki)
        host, _ = split_address(self.sm_listen)
        names = list(dict.fromkeys([*DEFAULT_CM_NAMES, host.strip("[]")]))
        return init_unit_pki(self.data_dir / "pki", names, [self.node_id])

    def image_policy(self) -> ImagePolicy:
        """The image manager's rules from this configuration.

        Raises:
            ConfigError: the trusted CA file cannot be read or holds no certificate.
        """
        roots: tuple[x509.Certificate, ...] = ()
        if self.trusted_ca is not None:
            try:
                pem = self.trusted_ca.read_bytes()
            except OSError as exc:
                raise ConfigError(f"trusted CA {self.trusted_ca}: {exc.strerror}") from None
            roots = tuple(load_pem_certificates(pem))
        return ImagePolicy(
            trusted_roots=roots,
            allow_unsigned=self.allow_unsigned,
            removed_ttl_s=self.removed_ttl_s,
            download=DownloadPolicy(
                parallel=self.download_parallel, receive_buffer_bytes=self.download_buffer_bytes
            ),
        )


class Agent:
    """The CM, its SM link and blob server, and the main node's SM as a child, wired together."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        # A non-loopback admin address is bad usage: refused before anything is touched.
        admin_listen = (
            parse_admin_listen(config.admin_listen)
            if config.admin and config.admin_listen
            else None
        )
        # One agent per data dir, for this process's life (a second one stops here, naming the
        # holder's pid); taking it also checks the data dir is writable.
        self.lock = DataDirLock.acquire(config.data_dir)
        try:
            self.storage = Storage(config.data_dir)
        except BaseException:
            self.lock.release()
            raise
        policy = config.image_policy()
        self.http = blob_client(
            policy.download, config.download_timeout_s, client_context(config.trusted_ca)
        )
        self.outbox = Outbox(self.storage, time.monotonic, time.time, config.outbox)
        self.link = CloudLink(
            config.targets or StaticTargets(config.cloud_url),
            config.system_id,
            self.outbox,
            on_message=self._on_message,
            on_connect=self._on_connect,
            on_disconnect=lambda: self.nodes.set_cloud_connected(False),
            reconnect=config.reconnect,
            ping_interval_s=config.keepalive_s,
            poll=config.poll(),
        )
        self.link.health.restore(
            [
                HealthChange(0.0, Health(health), reason, at)
                for at, health, reason in self.storage.health_history()
            ]
        )
        self.link.health.on_change = self._health_changed
        self.blobs = BlobStore(config.data_dir)
        self.images = ImageManager(self.storage, self.blobs, self.link, self.http, policy)
        self.pki = config.pki()
        self.nodes = NodeManager(
            self._unit_nodes(),
            known=self.pki.nodes if self.pki is not None else (),
            always=[config.node_id],
            node_timeout_s=config.node_timeout_s,
            on_node_changed=self._node_changed,
        )
        host, _ = split_address(config.sm_listen)
        public_host, public_port = (
            split_address(config.blob_advertise) if config.blob_advertise else (None, None)
        )
        cm_tls = None if self.pki is None else self.pki.cm
        self.blob_server = BlobServer(
            self.blobs,
            host.strip("[]"),
            config.blob_port,
            tls=cm_tls,
            insecure=config.insecure,
            public_host=public_host.strip("[]") if public_host else None,
            public_port=public_port,
            known=self._known_blob,
        )
        self.sm_server = SMServer(
            self.nodes,
            self._blob_urls,
            config.sm_listen,
            credentials=None if cm_tls is None else grpc_server_credentials(*cm_tls),
            insecure=config.insecure,
        )
        self.local_sm: LocalSM | None = None
        self.launcher = Launcher(
            self.storage,
            self.nodes,
            self.images.layout,
            self.images.item_facts,
            unit_config_of=self._installed_unit_config,
            node_wait_s=config.node_timeout_s,
        )
        self.status = UnitStatusHandler(
            self.storage,
            self.storage,
            self.images,
            self.launcher,
            self.nodes,
            self.link,
            debounce_s=config.status_debounce_s,
            boot_id=self.link.boot_id,  # one boot id on every message the unit sends
        )
        self.outbox.on_dropped = self.status.dropped
        self.handler = DesiredStatusHandler(
            self.storage.machine(MACHINE, UPDATE_CYCLE),
            self.storage,
            self.images,
            self.launcher,
            self.status,
            self.nodes,
            active_timeout_s=config.active_timeout_s,
        )
        self.images.on_changed = lambda: self.status.changed("item changed")
        installed = self._installed_unit_config()
        if installed is not None:
            self.nodes.use_unit_config(installed)  # a node that connects later gets it
        self._reconciling: asyncio.Task[None] | None = None
        self._reconcile_again = False
        self.admin: AdminServer | None = None
        self.metrics: AgentMetrics | None = None
        if config.admin:
            sources = Sources(self.handler, self.images, self.launcher, self.nodes, self.link)
            self.metrics = sources.metrics = AgentMetrics(lambda: gauges(sources), time.monotonic)
            self.metrics.resumed(self.handler.machine.phase)
            self.handler.on_move = self._cycle_moved
            token = load_or_create_token(config.data_dir)
            self.admin = AdminServer(
                make_app(sources, token), config.data_dir / SOCKET_FILE, admin_listen
            )

    def _cycle_moved(self, source: str, event: str, target: str) -> None:
        if self.metrics is not None:
            self.metrics.moved(source, event, target, self.handler.machine.payload)

    def _health_changed(self, change: HealthChange) -> None:
        """Keep the link's health changes across restarts (the last MAX_CHANGES)."""
        try:
            self.storage.record_health(
                change.wall_at, change.health.value, change.reason, MAX_CHANGES
            )
        except AosError as exc:
            log.warning(
                "link.health_not_stored",
                health=change.health.value,
                error=exc.message,
                next="kept in memory only",
            )
            return
        crashpoint(HEALTH_STORED)

    def _installed_unit_config(self) -> UnitConfig | None:
        """The unit config in force: the installed one (a refused one never is)."""
        record = self.storage.unit_config()
        if record is None or record.body is None:
            return None
        try:
            stored = parse_message(record.body, message_type="desiredStatus")
        except AosError:
            return None
        return stored.unit_config if isinstance(stored, DesiredStatus) else None

    def _unit_nodes(self) -> set[str]:
        """The nodes to wait for: this one, those the installed unit config names, and those
        the stored placement has instances on (their SMs come back after a CM restart)."""
        nodes = {self.config.node_id}
        config = self._installed_unit_config()
        if config is not None:
            nodes.update(n.node.key or "" for n in config.nodes)
        nodes.update(r.node for r in self.storage.instances() if r.node)
        return nodes

    def _known_blob(self, digest: str) -> bool:
        """Whether the image manager holds `digest` verified: it has a record of it (one
        indexed lookup, so serving a blob reads no manifest)."""
        return self.storage.blob(digest) is not None

    def _blob_urls(self, digests: list[str]) -> list[str]:
        """`GetBlobsInfos`: URLs into the blob server, for blobs of items this CM holds only."""
        for digest in digests:
            if not self._known_blob(digest):
                raise AosError(f"blob {digest} is not one this CM holds", code=AosCode.NOT_FOUND)
        return [self.blob_server.url_for(d) for d in digests]

    def _node_changed(self, node_id: str) -> None:
        """A node connected, reported, or went to error: place again, once for a burst."""
        if self._reconciling is not None and not self._reconciling.done():
            self._reconcile_again = True
            return
        self._reconciling = asyncio.get_running_loop().create_task(
            self._reconcile(node_id), name="reconcile"
        )

    async def _reconcile(self, node_id: str) -> None:
        while True:
            self._reconcile_again = False
            await asyncio.sleep(RECONCILE_DELAY_S)
            try:
                await self.launcher.reconcile(self.images.records, self.storage.node_states)
            except AosError as exc:
                log.warning(
                    "reconcile.failed",
                    node=node_id,
                    error=exc.message,
                    next="placed again when a node next changes, or by the next cycle",
                )
            # Also with nothing placed yet: the cloud learns the node's state and what it runs.
            self.status.changed(f"node {node_id} changed")
            if not self._reconcile_again:
                return

    async def _on_message(self, message: Message, arrived: float) -> None:
        if isinstance(message, DesiredStatus):
            await self.handler.accept(message, arrived)
            return
        raise AosError(
            f"message type {message.MESSAGE_TYPE} is not handled by this unit",
            code=AosCode.NOT_SUPPORTED,
        )

    async def _on_connect(self) -> None:
        self.nodes.set_cloud_connected(True)
        await self.status.send_full("link up")

    def _local_sm_args(self) -> list[str]:
        """`aoscore sm` options for the main node's SM, dialling the port the CM listens on."""
        host, _ = split_address(self.config.sm_listen)
        args = [
            "--node-id",
            self.config.node_id,
            "--cm",
            f"{host}:{self.sm_server.port}",
            "--data-dir",
            str(self.config.data_dir / "sm"),
            "--system-id",
            self.config.system_id,
        ]
        if self.config.docker_url:
            args += ["--docker-url", self.config.docker_url]
        level, fmt = logs.settings()
        args += ["--log-level", level, "--log-format", fmt]  # one log, one format
        if self.pki is None:
            args.append("--insecure")
        else:
            files = self.pki.node(self.config.node_id)
            args += ["--ca", str(files.ca), "--cert", str(files.cert), "--key", str(files.key)]
        return [*args, *self.config.local_sm_args]

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down cleanly."""
        log.info(
            "agent.start",
            system_id=self.config.system_id,
            node=self.config.node_id,
            data_dir=str(self.config.data_dir),
            cloud=self.config.cloud_url,
            sm_listen=self.config.sm_listen,
            tls=self.pki is not None,
            phase=self.handler.machine.phase,
            boot_id=self.status.boot_id,
        )
        self.nodes.set_desired_states(self.storage.node_states())
        if self.admin is not None:
            await self.admin.start()
        await self.blob_server.start()
        await self.sm_server.start()
        tasks: list[asyncio.Task[None]] = []
        if self.config.local_sm:
            self.local_sm = LocalSM(self._local_sm_args())
            tasks.append(asyncio.create_task(self.local_sm.run(), name="local-sm"))
            # The first status the cloud gets then says what this node runs.
            await self.nodes.wait_all_connected(LOCAL_SM_WAIT_S, among=[self.config.node_id])
        if self.handler.machine.phase in ("none", "failed") and self.images.records():
            # A removed item's TTL also runs out between cycles. Not on a store with no item:
            # that is a new unit, or a new store in place of one moved aside, whose blob files
            # are adopted by their hashes when the cloud sends the desired status again.
            self.images.collect()
        await self.handler.start()
        link_task = asyncio.create_task(self.link.run(), name="link")
        stop_task = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait({link_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        link_error = None
        if link_task in done and link_task.exception() is not None:
            link_error = link_task.exception()
            log.error(
                "agent.link_failed",
                error=f"{type(link_error).__name__}: {link_error}",
                next="shutting down; the supervisor should restart the agent",
            )
        started = time.monotonic()
        self.link.stop_accepting()
        await self.handler.stop()
        self.status.stop()
        await self.link.close()
        link_task.cancel()
        stop_task.cancel()
        if self._reconciling is not None:
            self._reconciling.cancel()
        await asyncio.gather(
            link_task, stop_task, *(t for t in [self._reconciling] if t), return_exceptions=True
        )
        await self.sm_server.stop()
        if self.local_sm is not None:
            await self.local_sm.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.blob_server.stop()
        if self.admin is not None:
            await self.admin.stop()
        await self.http.aclose()
        phase = self.handler.machine.phase
        self.storage.close()
        self.lock.release()
        log.info("agent.stopped", phase=phase, seconds=round(time.monotonic() - started, 3))
        if link_error is not None:
            raise LinkError(f"the cloud link failed: {link_error}") from link_error


async def run_agent(config: AgentConfig) -> None:
    """Run an agent until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(config)
    await agent.run(stop)
