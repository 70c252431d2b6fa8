"""`aoscore agent`: run the CM with its local SM."""

from __future__ import annotations

from pathlib import Path

import click

from .. import logs
from .common import data_dir_option, positive, run, system_id, with_logs, ws_url


@click.command()
@click.option("--cloud", required=True, callback=ws_url, help="The cloud's WebSocket URL.")
@click.option("--system-id", required=True, callback=system_id, help="This unit's systemId.")
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
    default=None,
    help="PEM file of the unit's CA(s): blob signing chains must lead to them, and HTTPS blob "
    "servers are trusted by them as well as by the system's store (/etc/ssl/certs).",
)
@click.option(
    "--allow-unsigned",
    is_flag=True,
    envvar="AOSCORE_ALLOW_UNSIGNED",
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
@with_logs
def agent(
    cloud: str,
    system_id: str,
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
    log_level: str,
    log_format: str,
) -> None:
    """Run the agent (CM with its local SM) until SIGINT or SIGTERM."""
    from ..agent import AgentConfig, run_agent
    from ..cm.imagemanager.manager import DAY_S

    logs.configure(log_level, log_format)
    config = AgentConfig(
        cloud,
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
    )
    run(run_agent(config))
