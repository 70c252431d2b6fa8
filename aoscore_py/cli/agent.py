"""`aoscore agent`: run the CM, serving the SM link, with the main node's SM as a child."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urljoin

import click

from .. import logs
from .common import data_dir_option, positive, run, system_id, with_logs, ws_url

MIB = 1 << 20


def _listen_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from ..cm.launcher.smserver import split_address
    from ..errors import ConfigError

    try:
        split_address(value)
    except ConfigError as exc:
        raise click.BadParameter(exc.message) from None
    return value


def _admin_address(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    from ..admin.listen import parse_admin_listen
    from ..errors import ConfigError

    if value is None:
        return None
    try:
        parse_admin_listen(value)
    except ConfigError as exc:
        raise click.BadParameter(exc.message) from None
    return value


def _optional_ws_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else ws_url(ctx, param, value)


def _optional_system_id(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> str | None:
    return None if value is None else system_id(ctx, param, value)


@click.command()
@click.option(
    "--cloud",
    default=None,
    callback=_optional_ws_url,
    help="Dial this fixed WebSocket URL (with --system-id), without provisioning or discovery.",
)
@click.option(
    "--system-id",
    default=None,
    callback=_optional_system_id,
    help="This unit's systemId, with --cloud (with discovery it is the provisioned one).",
)
@click.option(
    "--discovery",
    default=None,
    metavar="URL",
    help="The cloud's HTTPS discovery endpoint (cloud.json's `discovery`); the provisioning "
    "endpoint is beside it. Remembered at provisioning: later starts may leave it out.",
)
@click.option(
    "--provision-token",
    default=None,
    envvar="AOSCORE_PROVISION_TOKEN",
    show_envvar=True,
    help="One-use token to provision this unit on its first start (its key, certificate and "
    "system id go to <data-dir>/identity); not used once the unit has an identity.",
)
@click.option(
    "--cloud-ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="AOSCORE_CLOUD_CA",
    show_envvar=True,
    default=None,
    help="PEM file of a CA to trust for the cloud's HTTPS and wss, besides the system's "
    "(cloud.json's `cloudCa` for the reference cloud).",
)
@data_dir_option
@click.option(
    "--node-id",
    default="node-1",
    show_default=True,
    callback=system_id,
    help="This node's codename.",
)
@click.option("--docker-url", default=None, help="Docker engine URL (default: from environment).")
@click.option(
    "--active-timeout",
    type=float,
    default=600.0,
    show_default=True,
    callback=positive,
    help="Seconds waitingActive waits for instances to activate.",
)
@click.option(
    "--ca",
    "trusted_ca",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="AOSCORE_CA",
    show_envvar=True,
    default=None,
    help="PEM file of the unit's CA(s): blob signing chains must lead to them, and HTTPS blob "
    "servers are trusted by them as well as by the system's store (/etc/ssl/certs).",
)
@click.option(
    "--allow-unsigned",
    is_flag=True,
    envvar="AOSCORE_ALLOW_UNSIGNED",
    show_envvar=True,
    help="Accept blobs that come without a signature (refused by default).",
)
@click.option(
    "--removed-ttl",
    type=click.FloatRange(0),
    default=30.0,
    show_default=True,
    help="Days a removed item version is kept before it and its blobs are collected.",
)
@click.option(
    "--download-parallel",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Blobs downloaded at once.",
)
@click.option(
    "--download-timeout",
    type=float,
    default=30.0,
    show_default=True,
    callback=positive,
    help="Seconds without a byte before a blob transfer is retried.",
)
@click.option(
    "--download-buffer",
    type=click.IntRange(0, 64 << 10),
    default=256,
    show_default=True,
    help="KiB of kernel receive buffer per blob transfer (0: the kernel's autotuning). What "
    "it holds is lost if the agent is killed; raise it for fast links with long round trips.",
)
@click.option(
    "--sm-listen",
    default="127.0.0.1:8093",
    show_default=True,
    callback=_listen_address,
    metavar="HOST:PORT",
    help="Where the CM serves the SM link (AosCore's servicemanager.v5 over gRPC) and the blob "
    "server its SMs fetch images from (same host, a free port). Port 0 picks a free one (then "
    "only the local SM can find it).",
)
@click.option(
    "--blob-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="The port of the blob server SMs fetch images from, on the --sm-listen host (0: a "
    "free one, told to the SMs in each URL).",
)
@click.option(
    "--blob-advertise",
    default=None,
    callback=lambda ctx, param, value: (
        None if value is None else _listen_address(ctx, param, value)
    ),
    metavar="HOST:PORT",
    help="The address put in the blob URLs SMs get, when they reach the blob server through a "
    "proxy or a NAT (default: where it listens). HOST must be a name in the CM's certificate.",
)
@click.option(
    "--unit-pki",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Folder of the unit PKI (`aoscore unit pki init`): the unit CA, the CM's certificate, "
    "one per node. Default: <data-dir>/pki, made on first start for this node and the listen "
    "host; add a node with `aoscore unit pki init --dir <data-dir>/pki --node ID`.",
)
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext SM link and blob server, without certificates; only on a loopback "
    "--sm-listen (127.0.0.1, ::1, localhost).",
)
@click.option(
    "--no-local-sm",
    "no_local_sm",
    is_flag=True,
    help="Do not start this node's SM as a child process (run `aoscore sm` for it yourself).",
)
@click.option(
    "--node-timeout",
    type=float,
    default=60.0,
    show_default=True,
    callback=positive,
    help="Seconds a node's SM may be gone before the node is reported error and its instances "
    "are placed elsewhere; also how long launching waits for every node to connect once.",
)
@click.option(
    "--reconnect-min",
    type=float,
    default=15.0,
    show_default=True,
    callback=positive,
    help="Seconds before the first redial of the cloud after a failure; it doubles (+-30 % "
    "jitter) with each failure in a row.",
)
@click.option(
    "--reconnect-max",
    type=float,
    default=900.0,
    show_default=True,
    callback=positive,
    help="The most seconds between redials.",
)
@click.option(
    "--breaker-failures",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="Failures in a row after which the circuit opens: no dial for --breaker-open seconds.",
)
@click.option(
    "--breaker-open",
    type=float,
    default=300.0,
    show_default=True,
    callback=positive,
    help="Seconds the circuit stays open.",
)
@click.option(
    "--healthy-after",
    type=float,
    default=60.0,
    show_default=True,
    callback=positive,
    help="Seconds a connection must stay up before its failures are forgotten (a cloud that "
    "drops every connection at once is backed off like one that refuses).",
)
@click.option(
    "--keepalive",
    type=float,
    default=20.0,
    show_default=True,
    callback=positive,
    help="Seconds between pings on the cloud link; a link whose pong is this late again is "
    "dead, and closed after at most 10 s more (50 s in all by default). Raise it above the "
    "round trip on slower links (a cellular gateway adding 30 s each way needs more than 60).",
)
@click.option(
    "--status-debounce",
    type=float,
    default=10.0,
    show_default=True,
    callback=positive,
    help="Seconds item, instance and node changes are gathered before one delta status goes "
    "out (AosCore's unitStatusSendTimeout).",
)
@click.option(
    "--outbox-max-messages",
    type=click.IntRange(2),
    default=1000,
    show_default=True,
    help="Messages the durable outbox keeps for the cloud; when full, queued statuses fold "
    "into one full status.",
)
@click.option(
    "--outbox-max-mib",
    type=click.FloatRange(0.01),
    default=16.0,
    show_default=True,
    help="MiB of messages the durable outbox keeps (as --outbox-max-messages).",
)
@click.option(
    "--transport",
    type=click.Choice(["auto", "ws", "poll"]),
    default="auto",
    show_default=True,
    help="How the unit reaches its cloud: ws (WebSocket only), poll (HTTPS polling only) or "
    "auto (WebSocket, polling while none has been up for --poll-after). Polling needs "
    "discovery: its endpoints are beside the discovery URL.",
)
@click.option(
    "--poll-after",
    type=float,
    default=300.0,
    show_default=True,
    callback=positive,
    help="Seconds without a WebSocket after which --transport auto polls (it keeps "
    "redialling the WebSocket, and stops polling once one is up).",
)
@click.option(
    "--poll-interval",
    type=float,
    default=60.0,
    show_default=True,
    callback=positive,
    help="Seconds between polls of the desired status (+-20 % jitter); a desired status "
    "pushed over the WebSocket starts the interval again.",
)
@click.option(
    "--admin-listen",
    default=None,
    callback=_admin_address,
    metavar="HOST:PORT",
    help="Serve the local admin API on this loopback address too (127.0.0.1, ::1, localhost; "
    "anything else is refused: the API has no TLS). It is always on <data-dir>/admin.sock "
    "(0600), with the bearer token in <data-dir>/admin.token (0600).",
)
@click.option(
    "--no-admin",
    is_flag=True,
    help="Serve no admin API (no socket, no --admin-listen, no /metrics).",
)
@with_logs
def agent(
    cloud: str | None,
    system_id: str | None,
    discovery: str | None,
    provision_token: str | None,
    cloud_ca: Path | None,
    data_dir: Path,
    node_id: str,
    docker_url: str | None,
    active_timeout: float,
    trusted_ca: Path | None,
    allow_unsigned: bool,
    removed_ttl: float,
    download_parallel: int,
    download_timeout: float,
    download_buffer: int,
    sm_listen: str,
    blob_port: int,
    blob_advertise: str | None,
    unit_pki: Path | None,
    insecure: bool,
    no_local_sm: bool,
    node_timeout: float,
    reconnect_min: float,
    reconnect_max: float,
    breaker_failures: int,
    breaker_open: float,
    healthy_after: float,
    keepalive: float,
    status_debounce: float,
    outbox_max_messages: int,
    outbox_max_mib: float,
    transport: str,
    poll_after: float,
    poll_interval: float,
    admin_listen: str | None,
    no_admin: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Run the agent until SIGINT or SIGTERM.

    The agent is the unit's CM: it keeps the unit converged on the desired status the cloud
    sends, and drives every node's service manager over the SM link. It starts this node's SM
    (`aoscore sm`) as a child process and restarts it if it dies, unless --no-local-sm. Other
    nodes run `aoscore sm --cm HOST:PORT` with their certificate from the unit PKI.
    Stopping the agent leaves the containers running; the next start resumes.

    The cloud is found by discovery (--discovery, with --provision-token on the first start),
    or dialled at a fixed --cloud URL as --system-id.

    Exit codes: 0 stopped by a signal; 1 it could not run (data dir in use, port taken, the
    provisioning token refused...); 2 bad usage.
    """
    if cloud is not None and (discovery or provision_token):
        raise click.UsageError(
            "--cloud dials a fixed URL; --discovery and --provision-token find the cloud: "
            "give one way"
        )
    if cloud is not None and system_id is None:
        raise click.UsageError("--cloud needs --system-id")
    if cloud is None and discovery is None:
        from ..iam.identity import load_identity

        if load_identity(data_dir) is None:
            raise click.UsageError(
                "give --cloud URL with --system-id, or --discovery URL (with "
                "--provision-token on the first start)"
            )
    if cloud is not None and transport == "poll":
        raise click.UsageError(
            "--transport poll needs discovery (--discovery, or a provisioned unit): a fixed "
            "--cloud URL has no HTTPS endpoints"
        )
    if no_admin and admin_listen is not None:
        raise click.UsageError("give --admin-listen or --no-admin, not both")
    if insecure and unit_pki is not None:
        raise click.UsageError("give --unit-pki or --insecure, not both")
    if reconnect_max < reconnect_min:
        raise click.BadParameter(
            f"{reconnect_max:g} is below --reconnect-min {reconnect_min:g}",
            param_hint="--reconnect-max",
        )
    from ..agent import AgentConfig, run_agent
    from ..cm.communication.health import ReconnectPolicy
    from ..cm.communication.outbox import OutboxLimits
    from ..cm.communication.poll import Transport
    from ..cm.imagemanager.manager import DAY_S

    logs.configure(log_level, log_format)
    targets = None
    if cloud is None:
        from ..cm.communication.discovery import discovery_source

        unit, targets = run(
            discovery_source(
                data_dir,
                discovery_url=discovery,
                provision_token=provision_token,
                cloud_ca=cloud_ca,
            )
        )
        if system_id is not None and system_id != unit:
            raise click.UsageError(f"--system-id {system_id}: this unit was provisioned as {unit}")
        system_id = unit
    config = AgentConfig(
        cloud or targets.url,
        system_id,
        data_dir,
        node_id,
        docker_url,
        active_timeout,
        trusted_ca=trusted_ca,
        allow_unsigned=allow_unsigned,
        removed_ttl_s=removed_ttl * DAY_S,
        download_parallel=download_parallel,
        download_timeout_s=download_timeout,
        download_buffer_bytes=download_buffer << 10,
        sm_listen=sm_listen,
        blob_port=blob_port,
        blob_advertise=blob_advertise,
        insecure=insecure,
        unit_pki=unit_pki,
        local_sm=not no_local_sm,
        node_timeout_s=node_timeout,
        reconnect=ReconnectPolicy(
            initial_s=reconnect_min,
            cap_s=reconnect_max,
            breaker_failures=breaker_failures,
            breaker_open_s=breaker_open,
            healthy_after_s=healthy_after,
        ),
        targets=targets,
        outbox=OutboxLimits(max_count=outbox_max_messages, max_bytes=int(outbox_max_mib * MIB)),
        status_debounce_s=status_debounce,
        keepalive_s=keepalive,
        transport=Transport(transport),
        poll_url=None if targets is None else urljoin(targets.url, "."),
        poll_after_s=poll_after,
        poll_interval_s=poll_interval,
        admin=not no_admin,
        admin_listen=admin_listen,
    )
    run(run_agent(config))
