"""`aoscore sm`: one node's service manager, run as its own process until SIGINT or SIGTERM.

`run_sm` wires the node's Docker engine (`DockerRuntime`), the manager that runs instances on it
(`DockerServiceManager`, its state under DATA_DIR/sm), the blob cache that fetches their images
from the CM's blob server (`BlobCache` on a `BlobStore` in DATA_DIR), the node config store
(DATA_DIR/sm/node-config.json), and the link (`SmLink`) with the node's behaviour on it
(`SmNode`). Shutdown closes the link and
leaves every container running: a restarted SM finds them by their labels and reports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..backoff import Backoff
from ..errors import AosError, ConfigError
from ..iam.tls import TlsFiles, check_insecure_host
from ..logs import get_logger
from .node import POLL_S, SmNode
from .nodeinfo import NodeResources, sm_info_message

log = get_logger("sm.process")

DEFAULT_SYSTEM_ID = "aoscore"
"""The unit label of an SM not told its unit's systemId."""

SHUTDOWN_GRACE_S = 5.0
"""How long a stopping SM waits for its link to end its stream."""


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
    resources: NodeResources = field(default_factory=NodeResources)
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
    from .nodeconfig import FILE_NAME as NODE_CONFIG_FILE
    from .nodeconfig import NodeConfigStore
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
            config.node_id,
            config.system_id,
            runtime,
            store.path,
            state_dir=state_dir,
            max_dmips=resources.max_dmips,
            cpus=int(info.get("NCPU") or 0) or None,
        )
        async with blob_client(policy, config.download_timeout_s, tls) as http:
            link = SmLink(config.cm, credentials=credentials)
            cache = BlobCache(store, link, http, policy)
            node_config = NodeConfigStore(config.node_id, state_dir / NODE_CONFIG_FILE)
            node = SmNode(
                config.node_id,
                manager,
                cache,
                sm_info,
                previous=previous,
                node_config=node_config,
            )
            node.link = link
            log.info(
                "sm.ready",
                node=config.node_id,
                platform=str(platform),
                total_ram=resources.total_ram,
                instances=len(previous),
                node_config=str(node_config.status().state),
                node_config_version=node_config.status().version or None,
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
