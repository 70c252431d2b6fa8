"""The `aoscore` command.

Exit codes: 0 success; 1 the operation failed (the message says why); 2 bad usage or bad input
(a bad argument, a file that is not a valid message), with a message naming the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from . import logs
from .errors import AosError, ConfigError, ProtocolError

DEFAULT_DATA_DIR = "/var/lib/aoscore"
DEFAULT_CLOUD_DIR = "/var/lib/aoscore-cloud"
_SYSTEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"aoscore: {message}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def _exit_codes(interrupted: str = "interrupted") -> Iterator[None]:
    """Turn our errors into the exit codes above, with one line on stderr and no traceback."""
    try:
        yield
    except ConfigError as exc:
        _fail(exc.message, 2)
    except AosError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        _fail(interrupted, 130)


def _run(coro: Any) -> Any:
    with _exit_codes():
        return asyncio.run(coro)


def _ws_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not re.match(r"^wss?://[^/\s]+", value or ""):
        raise click.BadParameter(f"{value!r} is not a ws:// or wss:// URL")
    return value


def _system_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not _SYSTEM_ID.match(value or ""):
        raise click.BadParameter(
            f"{value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def _positive(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be greater than 0, got {value}")
    return value


log_options = [
    click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
    ),
    click.option(
        "--log-format", type=click.Choice(["logfmt", "json"]), default="logfmt", show_default=True
    ),
]


def with_logs(fn: Any) -> Any:
    for option in reversed(log_options):
        fn = option(fn)
    return fn


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="AOSCORE_DATA_DIR",
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Where the agent keeps its state.",
)
cloud_dir_option = click.option(
    "--cloud-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="AOSCORE_CLOUD_DIR",
    default=DEFAULT_CLOUD_DIR,
    show_default=True,
    help="The reference cloud's state folder.",
)


def blob_serving_options(fn: Any) -> Any:
    """How the cloud serves blobs: normally, or with a fault for tests and demos."""
    options = [
        click.option(
            "--signing",
            type=click.Choice(["valid", "unsigned", "wrong"]),
            default="valid",
            show_default=True,
            help="Sign blobs, leave them unsigned, or sign other bytes.",
        ),
        click.option("--alg", default=None, help="Signature algorithm, e.g. RSA/SHA384/PSS."),
        click.option("--base", default=None, help="Serve blob URLs from this base URL."),
        click.option("--dead-first", is_flag=True, help="Put a dead URL first in each list."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aoscore-py")
def cli() -> None:
    """aoscore: an edge agent that keeps a unit converged on its cloud's desired status."""


@cli.command()
@click.option("--cloud", required=True, callback=_ws_url, help="The cloud's WebSocket URL.")
@click.option("--system-id", required=True, callback=_system_id, help="This unit's systemId.")
@data_dir_option
@click.option(
    "--node-id",
    default="node-1",
    show_default=True,
    callback=_system_id,
    help="This node's codename.",
)
@click.option("--docker-url", default=None, help="Docker engine URL (default: from environment).")
@click.option(
    "--active-timeout",
    type=float,
    default=600.0,
    show_default=True,
    callback=_positive,
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
    callback=_positive,
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
    from .agent import AgentConfig, run_agent
    from .cm.imagemanager.manager import DAY_S

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
    _run(run_agent(config))


@cli.group()
def cloud() -> None:
    """The reference cloud: serve units, publish test images, push desired statuses."""


@cloud.command("serve")
@cloud_dir_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port on 127.0.0.1 (0 picks a free one; see cloud.json).",
)
@click.option("--registry", default=None, help="Use this registry URL instead of starting one.")
@click.option(
    "--blob-urls-delay",
    type=click.FloatRange(0, 3600),
    default=0.0,
    help="Answer requestBlobUrls after this many seconds (a slow cloud, for tests).",
)
@blob_serving_options
@with_logs
def cloud_serve(
    cloud_dir: Path,
    port: int,
    registry: str | None,
    blob_urls_delay: float,
    signing: str,
    alg: str | None,
    base: str | None,
    dead_first: bool,
    log_level: str,
    log_format: str,
) -> None:
    """Serve units on loopback until SIGINT or SIGTERM."""
    from .cloud.server import BlobServing
    from .cloud.service import serve_cloud

    logs.configure(log_level, log_format)
    with _exit_codes():
        serving = BlobServing(signing, alg, base, dead_first)
    _run(
        serve_cloud(
            cloud_dir,
            port=port,
            registry_url=registry,
            blob_urls_delay_s=blob_urls_delay,
            serving=serving,
        )
    )


@cloud.command("blobs")
@cloud_dir_option
@blob_serving_options
def cloud_blobs(
    cloud_dir: Path, signing: str, alg: str | None, base: str | None, dead_first: bool
) -> None:
    """Change how the running cloud serves blobs (signing, URLs); prints the new setting."""
    from .cloud.client import operate, operator_url
    from .cloud.server import BlobServing

    with _exit_codes():
        serving = BlobServing(signing, alg, base, dead_first)
        url = operator_url(cloud_dir)
    reply = _run(operate(url, {"op": "blobs", **serving.describe()}))
    if not reply.get("ok"):
        _fail(str(reply.get("error")))
    click.echo(orjson.dumps(reply["serving"]).decode())


@cloud.group("pki")
def cloud_pki() -> None:
    """The test PKI that signs the blobs the reference cloud serves."""


@cloud_pki.command("init")
@cloud_dir_option
@click.option("--key-type", type=click.Choice(["ec", "rsa"]), default="ec", show_default=True)
@click.option("--force", is_flag=True, help="Replace an existing PKI.")
def cloud_pki_init(cloud_dir: Path, key_type: str, force: bool) -> None:
    """Make a root CA, an intermediate and a signer; print the root CA's path for units."""
    from .cloud.state import CloudState
    from .crypto.pki import ROOT_FILE, init_pki

    folder = CloudState(cloud_dir).pki_dir
    with _exit_codes():
        pki = init_pki(folder, key_type, force=force)
    click.echo(f"{folder / ROOT_FILE}  (chain {pki.chain_name}, {pki.alg})")


@cloud.command("publish")
@click.argument("name")
@cloud_dir_option
@click.option("--registry", default=None, help="Registry URL (default: the running cloud's).")
@click.option(
    "--healthcheck",
    default=None,
    help="A health check command run by the engine, e.g. 'test -f /ready'.",
)
@click.option(
    "--start-period",
    type=click.FloatRange(0),
    default=None,
    help="Seconds during which failing health checks leave the instance activating.",
)
@click.option(
    "--size",
    type=click.IntRange(0, 1 << 32),
    default=0,
    help="Add a layer of this many pseudo-random bytes.",
)
def cloud_publish(
    name: str,
    cloud_dir: Path,
    registry: str | None,
    healthcheck: str | None,
    start_period: float | None,
    size: int,
) -> None:
    """Build a busybox test image NAME, push it to the registry, print its indexDigest."""
    from .cloud.service import publish

    if not _IMAGE_NAME.match(name):
        raise click.BadParameter(
            f"{name!r}: use lowercase letters, digits and . _ -", param_hint="NAME"
        )
    logs.configure("warning")
    check = ["/bin/sh", "-c", healthcheck] if healthcheck else None
    with _exit_codes():
        image = publish(
            cloud_dir,
            name,
            registry_url=registry,
            healthcheck=check,
            health_start_period_s=start_period,
            extra_layer_bytes=size,
        )
    click.echo(image.index_digest)


def read_desired_status(path: Path) -> Any:
    """A desired status from a file holding a frame, a bare data object or a bare body.

    Raises:
        ProtocolError: the file is not a valid desired status.
    """
    from .protocol import DesiredStatus, Envelope, parse_any

    raw = path.read_bytes()
    parsed = parse_any(raw, message_type="desiredStatus")
    message = parsed.data if isinstance(parsed, Envelope) else parsed
    if not isinstance(message, DesiredStatus):
        raise ProtocolError("$", f"expected a desiredStatus, got {type(message).__name__}")
    return message


@cloud.command("push")
@click.option("--unit", required=True, callback=_system_id, help="The unit's systemId.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@cloud_dir_option
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    callback=_positive,
    help="Seconds to wait for the unit's ack.",
)
def cloud_push(unit: str, file: Path, cloud_dir: Path, timeout: float) -> None:
    """Send the desired status in FILE to a unit and print its ack."""
    from .cloud.client import operator_url, push

    try:
        ds = read_desired_status(file)
    except ProtocolError as exc:
        _fail(f"{file}: {exc.path}: {exc.reason}", 2)
    except OSError as exc:
        _fail(f"{file}: cannot read: {exc.strerror}", 2)
    with _exit_codes():
        url = operator_url(cloud_dir)
    reply = _run(push(url, unit, ds, timeout))
    if reply.get("ok"):
        click.echo(f"ack unit={unit} txn={reply['txn']}")
        return
    if "nack" in reply:
        click.echo(f"nack unit={unit} txn={reply.get('txn')} reason={reply.get('error')!r}")
        sys.exit(1)
    _fail(str(reply.get("error")))


@cloud.command("timeline")
@click.option("--unit", required=True, callback=_system_id)
@cloud_dir_option
@click.option("--last", is_flag=True, help="Only the last unitStatus.")
def cloud_timeline(unit: str, cloud_dir: Path, last: bool) -> None:
    """Print the unitStatus timeline of a unit, one JSON object per line."""
    from .cloud.state import CloudState, read_timeline

    records = read_timeline(CloudState(cloud_dir).timeline_path(unit))
    for record in records[-1:] if last else records:
        click.echo(orjson.dumps(record).decode())


@cli.command()
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the rows as a JSON list.",
)
@click.option("--points", default=None, help="Comma-separated crash points (default: all).")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep the run's files (default: a new temporary folder).",
)
def powercut(json_path: Path | None, points: str | None, work_dir: Path | None) -> None:
    """Kill the agent at every crash point and check that the unit still converges."""
    from .powercut import CRASH_POINTS, run_matrix

    selected = list(CRASH_POINTS)
    if points:
        selected = [p.strip() for p in points.split(",") if p.strip()]
        unknown = [
            p for p in selected if p.split(":")[0] not in {c.split(":")[0] for c in CRASH_POINTS}
        ]
        if unknown:
            raise click.BadParameter(f"unknown crash points {unknown}", param_hint="--points")
    logs.configure("warning")
    with _exit_codes("interrupted; what the matrix started was stopped"):
        ok = run_matrix(selected, json_path, work_dir)
    sys.exit(0 if ok else 1)


@cli.group()
def images() -> None:
    """The unit's items and blobs: status of downloads, verification on demand."""


def _open_store(data_dir: Path) -> Any:
    from .storage import DB_NAME, Storage

    if not (data_dir / DB_NAME).exists():
        _fail(f"{data_dir}: no agent store here (is --data-dir right?)", 2)
    with _exit_codes():
        return Storage(data_dir)


@images.command("status")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def images_status(data_dir: Path, as_json: bool) -> None:
    """Items with their states, and the downloads under way (bytes, rate)."""
    from .cm.imagemanager.manager import read_progress

    storage = _open_store(data_dir)
    try:
        items = storage.items()
        blobs = storage.blobs()
    finally:
        storage.close()
    progress = read_progress(data_dir)
    if as_json:
        body = {
            "items": [
                {
                    "id": r.item_id,
                    "version": r.version,
                    "state": r.state.value,
                    "error": r.error.message if r.error else None,
                }
                for r in items
            ],
            "blobs": {"count": len(blobs), "bytes": sum(b.size for b in blobs)},
            "transfers": progress["transfers"],
        }
        click.echo(orjson.dumps(body).decode())
        return
    click.echo(f"{'item':<24} {'version':<12} {'state':<12} error")
    for r in items:
        error = r.error.message if r.error else ""
        click.echo(f"{r.item_id:<24} {r.version:<12} {r.state.value:<12} {error}")
    click.echo(f"\nblobs: {len(blobs)} verified, {sum(b.size for b in blobs) / (1 << 20):.1f} MiB")
    transfers = progress["transfers"]
    if transfers:
        click.echo(f"\n{'downloading':<20} {'present':>12} {'size':>12} {'%':>6} {'MiB/s':>7}")
        for t in transfers:
            pct = 100 * t["present"] / t["size"] if t["size"] else 0.0
            rate = t["bytesPerSecond"] / (1 << 20)
            digest, present, size = t["digest"][:19], t["present"], t["size"]
            click.echo(f"{digest:<20} {present:>12} {size:>12} {pct:>6.1f} {rate:>7.1f}")


@images.command("verify")
@data_dir_option
def images_verify(data_dir: Path) -> None:
    """Hash every stored blob again; remove the corrupt ones so they are fetched again.

    Exits 1 when any blob was corrupt or missing.
    """
    from .cm.imagemanager.audit import audit
    from .cm.imagemanager.blobstore import BlobStore

    storage = _open_store(data_dir)
    try:
        rows = audit(storage, BlobStore(data_dir))
    finally:
        storage.close()
    for row in rows:
        size = "-" if row.size is None else str(row.size)
        click.echo(f"{row.digest}  {size:>12}  {row.verdict:<10}  {row.action}")
    bad = [r for r in rows if r.verdict in ("corrupt", "missing")]
    click.echo(f"{len(rows)} blobs checked, {len(bad)} corrupt or missing")
    sys.exit(1 if bad else 0)


def _add_protocol() -> None:
    from .protocol.cli import protocol

    cli.add_command(protocol)


_add_protocol()


def main() -> None:
    cli(prog_name="aoscore")
