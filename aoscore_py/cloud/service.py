"""Running the reference cloud (`aoscore cloud serve`) and publishing test images to it."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from ..crypto.pki import META_FILE, ROOT_FILE, Pki, init_pki, load_pki
from ..errors import LocalError
from ..logs import get_logger
from ..nodes.itemconfig import ItemConfig, item_config_json
from .https import Front, TlsSettings
from .oci import OciImage, build_test_image, push_image
from .operator import OperatorApi
from .registry import Registry
from .server import BlobServing, CloudServer
from .state import TOKEN_FILE, CloudState

log = get_logger("cloud")


async def serve_cloud(
    cloud_dir: Path,
    *,
    port: int = 0,
    registry_url: str | None = None,
    blob_urls_delay_s: float = 0.0,
    serving: BlobServing | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    tls: TlsSettings | None = None,
    operator_port: int = 0,
    keepalive_s: float = 20.0,
) -> None:
    """Serve until SIGINT/SIGTERM (or `stop`); starts its own registry unless given one, and
    makes a test PKI (EC) unless `cloud pki init` made one.

    Args:
        tls: serve units over wss with the cloud's CA, and provisioning and discovery over
            HTTPS. None: units on plain ws on `port` (loopback), as for tests and the demo.
        operator_port: the operator HTTP API's port on loopback (0: a free one); its URL
            and the file holding its token are written to cloud.json.
        keepalive_s: seconds between pings to each unit (see `CloudServer`).
    """
    state = CloudState(cloud_dir)
    pki = ensure_pki(state)
    registry: Registry | None = None
    if registry_url is None:
        registry = Registry(cloud_dir / "registry").start()
        registry_url = registry.url
    server = CloudServer(
        state,
        registry_url,
        pki=pki,
        serving=serving,
        blob_urls_delay_s=blob_urls_delay_s,
        keepalive_s=keepalive_s,
    )
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    front: Front | None = None
    api: OperatorApi | None = None
    try:
        front = Front(state, server, tls) if tls is not None else None
        # Over TLS only provisioned units can fetch a desired status: a push to any other id
        # (a typo) is refused rather than stored for a unit that cannot exist.
        provisioned = front.registrar.is_unit if front is not None else None
        api = OperatorApi(server, state.ensure_operator_token(), provisioned)
        if front is None:
            endpoints = {"ws": f"ws://127.0.0.1:{await server.start('127.0.0.1', port)}"}
        else:
            endpoints = await front.start()
        operator = f"http://127.0.0.1:{await api.start(operator_port)}"
        state.write_endpoints(
            {
                "operator": operator,
                "operatorToken": str(cloud_dir / TOKEN_FILE),
                "registry": registry_url,
                "trustedCa": str(state.pki_dir / ROOT_FILE),
                **endpoints,
                "pid": os.getpid(),
            }
        )
        log.info(
            "cloud.serving",
            operator=operator,
            registry=registry_url,
            dir=str(cloud_dir),
            **endpoints,
        )
        if ready is not None:
            ready.set()
        await stop.wait()
    finally:
        if api is not None:
            await api.close()
        await server.close()
        if front is not None:
            await front.close()
        state.clear_endpoints()
        state.close()
        if registry is not None:
            registry.stop()
        log.info("cloud.stopped", dir=str(cloud_dir))


def ensure_pki(state: CloudState) -> Pki:
    """The cloud's test PKI, made (EC P-256) on first use."""
    if (state.pki_dir / META_FILE).exists():
        return load_pki(state.pki_dir)
    pki = init_pki(state.pki_dir, "ec")
    log.info(
        "pki.created",
        dir=str(state.pki_dir),
        key_type="ec",
        trusted_ca=str(state.pki_dir / ROOT_FILE),
    )
    return pki


def registry_of(cloud_dir: Path, registry_url: str | None) -> str:
    """The registry to publish to: the one given, or the running cloud's.

    Raises:
        LocalError: neither is available (an operation that failed, not bad input).
    """
    if registry_url:
        return registry_url
    endpoints = CloudState(cloud_dir).endpoints()
    if not endpoints:
        raise LocalError(
            f"no reference cloud is running with {cloud_dir}: start `aoscore cloud serve` "
            "or pass --registry"
        )
    return str(endpoints["registry"])


def publish(
    cloud_dir: Path,
    name: str,
    *,
    registry_url: str | None = None,
    command: list[str] | None = None,
    healthcheck: list[str] | None = None,
    health_start_period_s: float | None = None,
    health_interval_s: float | None = None,
    extra_layer_bytes: int = 0,
    extra_layers: int = 1,
    labels: dict[str, str] | None = None,
    item_config: ItemConfig | None = None,
) -> OciImage:
    """Build a test image, push it to the registry, and add its blobs to the catalog (so the
    cloud hands out signed URLs for each of them, the item config among them).

    Args:
        item_config: AosCore's item config, written as JSON and named by the manifest as
            `aosItemConfig`; None for a plain OCI image.
    """
    registry = registry_of(cloud_dir, registry_url)
    image = build_test_image(
        name,
        command=command,
        healthcheck=healthcheck,
        health_start_period_s=health_start_period_s,
        health_interval_s=health_interval_s,
        extra_layer_bytes=extra_layer_bytes,
        extra_layers=extra_layers,
        labels={"io.aoscore.test-image": name, **(labels or {})},
        item_config=None if item_config is None else item_config_json(item_config),
    )
    push_image(registry, image)
    CloudState(cloud_dir).add_blobs(image.name, image.blobs)
    log.info(
        "image.published",
        name=name,
        index_digest=image.index_digest,
        item_config=image.item_config_digest,
        registry=registry,
    )
    return image
