"""`aoscore sm`: run one node's service manager, serving its CM over the SM link."""

from __future__ import annotations

import re
from pathlib import Path

import click

from .. import logs
from .common import run, system_id, with_logs

DEFAULT_SM_DATA_DIR = "/var/lib/aoscore-sm"
_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ByteSize(click.ParamType):
    """A size in bytes: `1073741824`, `512MiB`, `2G` (K, M, G, T are powers of 1024)."""

    name = "size"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        found = _SIZE.match(str(value))
        if not found:
            self.fail(f"{value!r} is not a size such as 512MiB, 2G or 1073741824", param, ctx)
        return int(found.group(1)) * _UNITS[found.group(2).lower()]


def _cm_address(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    from ..errors import ConfigError
    from ..sm.link import parse_target

    try:
        parse_target(value)
    except ConfigError as exc:
        raise click.BadParameter(exc.message) from None
    return value


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option(
    "--node-id",
    required=True,
    callback=system_id,
    help="This node's id, as the unit config names it (with the unit PKI, the common name of "
    "its certificate).",
)
@click.option(
    "--cm",
    required=True,
    callback=_cm_address,
    metavar="HOST:PORT",
    help="The CM's SM link address (`aoscore agent --sm-listen`). With TLS, HOST must be a "
    "name or address the CM's certificate carries.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="AOSCORE_SM_DATA_DIR",
    show_envvar=True,
    default=DEFAULT_SM_DATA_DIR,
    show_default=True,
    help="The SM's own folder: its blob cache, its state, its lock (one SM per folder).",
)
@click.option(
    "--system-id",
    default="aoscore",
    show_default=True,
    callback=system_id,
    envvar="AOSCORE_SYSTEM_ID",
    show_envvar=True,
    help="The unit's systemId, put on every container as the io.aoscore.unit label: the SM "
    "only ever touches containers carrying it and this node's id.",
)
@click.option("--docker-url", default=None, help="Docker engine URL (default: from environment).")
@click.option("--ca", type=_FILE, default=None, help="PEM file of the unit's CA.")
@click.option("--cert", type=_FILE, default=None, help="PEM file of this node's certificate.")
@click.option("--key", type=_FILE, default=None, help="PEM file of this node's private key.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Plaintext gRPC and HTTP blob downloads, without certificates; only with a loopback "
    "--cm (127.0.0.1, ::1, localhost).",
)
@click.option(
    "--total-ram",
    type=ByteSize(),
    default=None,
    help="The node's RAM as SMInfo reports it (default: what the Docker engine reports).",
)
@click.option("--allowed-ram", type=ByteSize(), default=None, help="The RAM instances may book.")
@click.option(
    "--max-dmips",
    type=click.IntRange(1),
    default=None,
    help="The node's CPU in DMIPS, as SMInfo reports it; an item config's cpuDmipsLimit is a "
    "share of it (default: not reported, and each CPU counts 10000 DMIPS for quotas).",
)
@click.option(
    "--allowed-dmips", type=click.IntRange(1), default=None, help="The DMIPS instances may book."
)
@click.option(
    "--max-instances",
    type=click.IntRange(0),
    default=None,
    help="At most this many instances on this node (default or 0: no limit).",
)
@with_logs
def sm(
    node_id: str,
    cm: str,
    data_dir: Path,
    system_id: str,
    docker_url: str | None,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    insecure: bool,
    total_ram: int | None,
    allowed_ram: int | None,
    max_dmips: int | None,
    allowed_dmips: int | None,
    max_instances: int | None,
    log_level: str,
    log_format: str,
) -> None:
    """Run this node's service manager until SIGINT or SIGTERM.

    It dials the CM at --cm and holds one RegisterSM stream (AosCore's servicemanager.v5):
    it says what the node offers (SMInfo) and runs (NodeInstancesStatus), runs on the node's
    Docker engine exactly the instances the CM sends, fetching their images from the CM's blob
    server into its own cache, and reports every change. Crashed instances are restarted with
    backoff whether the CM is there or not; when the CM goes away the instances keep running
    and the SM dials again with backoff. Stopping the SM leaves the containers running.

    Mutual TLS by default: --ca, --cert and --key (`aoscore unit pki init` makes them);
    --insecure only on loopback.

    Exit codes: 0 stopped by a signal; 1 it could not run (its data dir in use, ...);
    2 bad usage (a missing TLS file, --insecure off loopback, a malformed address).
    """
    from ..iam.tls import TlsFiles
    from ..sm.nodeinfo import NodeResources
    from ..sm.process import SmConfig, run_sm

    given = {"--ca": ca, "--cert": cert, "--key": key}
    if insecure and any(given.values()):
        raise click.UsageError("give --ca/--cert/--key or --insecure, not both")
    if not insecure and not all(given.values()):
        missing = ", ".join(name for name, value in given.items() if value is None)
        raise click.UsageError(
            f"missing {missing}: the SM link is mutual TLS with the unit's CA and this node's "
            "certificate and key (plaintext only with --insecure on a loopback --cm)"
        )
    logs.configure(log_level, log_format)
    config = SmConfig(
        node_id=node_id,
        cm=cm,
        data_dir=data_dir,
        system_id=system_id,
        docker_url=docker_url,
        tls=TlsFiles(ca, cert, key) if ca and cert and key else None,
        insecure=insecure,
        resources=NodeResources(total_ram, allowed_ram, max_dmips, allowed_dmips, max_instances),
    )
    run(run_sm(config))
