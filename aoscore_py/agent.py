"""The agent process (CM with its in-process SM): wiring, start, and clean shutdown.

Shutdown on SIGINT or SIGTERM: stop taking messages, cancel the running phase at its next
await (it stays committed, the journal notes the interruption), close the cloud link, exit 0.
Containers keep running; the next start resumes.

Start-up: the data dir is locked for the life of the process (a second agent on it exits 1
naming the holder's pid) and checked writable (a read-only or unwritable one exits 1 naming it);
a damaged store, or one that lost state, is moved aside and the agent starts on a new one
(storage/database.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from statemachine import UPDATE_CYCLE

from .blobs.download import DownloadPolicy, blob_client
from .blobs.store import BlobStore
from .cm.communication.link import CloudLink
from .cm.imagemanager.manager import DAY_S, ImageManager, ImagePolicy
from .cm.launcher.launcher import Launcher
from .cm.updatemanager.handler import MACHINE, DesiredStatusHandler
from .cm.updatemanager.unitstatus import UnitStatusHandler
from .crypto.signing import load_pem_certificates
from .errors import AosCode, AosError, ConfigError, LinkError
from .iam.tls import client_context
from .logs import get_logger
from .protocol import DesiredStatus, Message
from .sm.docker_runtime import DockerRuntime
from .sm.manager import DockerServiceManager
from .storage import Storage
from .storage.lock import DataDirLock

log = get_logger("agent")


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
    """The CM and its local SM, wired together."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
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
        self.link = CloudLink(
            config.cloud_url,
            config.system_id,
            on_message=self._on_message,
            on_connect=self._on_connect,
        )
        self.blobs = BlobStore(config.data_dir)
        self.images = ImageManager(self.storage, self.blobs, self.link, self.http, policy)
        self.runtime = DockerRuntime(config.docker_url)
        self.sm = DockerServiceManager(
            config.node_id,
            config.system_id,
            self.runtime,
            self.blobs.path,
            state_dir=config.data_dir / "sm",
        )
        nodes = {config.node_id: self.sm}
        self.launcher = Launcher(self.storage, nodes, self.images.layout)
        self.status = UnitStatusHandler(
            self.storage, self.storage, self.images, self.launcher, nodes, self.link
        )
        self.handler = DesiredStatusHandler(
            self.storage.machine(MACHINE, UPDATE_CYCLE),
            self.storage,
            self.images,
            self.launcher,
            self.status,
            frozenset(nodes),
            active_timeout_s=config.active_timeout_s,
        )

    async def _on_message(self, message: Message, arrived: float) -> None:
        if isinstance(message, DesiredStatus):
            await self.handler.accept(message, arrived)
            return
        raise AosError(
            f"message type {message.MESSAGE_TYPE} is not handled by this unit",
            code=AosCode.NOT_SUPPORTED,
        )

    async def _on_connect(self) -> None:
        await self.status.send_full("link up")

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then shut down cleanly."""
        log.info(
            "agent.start",
            system_id=self.config.system_id,
            node=self.config.node_id,
            data_dir=str(self.config.data_dir),
            cloud=self.config.cloud_url,
            phase=self.handler.machine.phase,
            boot_id=self.status.boot_id,
        )
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
        await self.link.close()
        link_task.cancel()
        stop_task.cancel()
        await asyncio.gather(link_task, stop_task, return_exceptions=True)
        await self.http.aclose()
        await self.sm.aclose()
        self.runtime.close()
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
