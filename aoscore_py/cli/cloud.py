"""`aoscore cloud ...`: the reference cloud and its operator commands."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import orjson

from .. import logs
from ..cloud.publishing import IMAGE_NAME, MAX_QUANTITY, RUNTIME_TYPE, item_config_of
from ..errors import ProtocolError
from .common import (
    blob_serving_options,
    cloud_dir_option,
    exit_codes,
    fail,
    positive,
    run,
    system_id,
    with_logs,
)
from .sm import ByteSize


class _Count(click.ParamType):
    """A whole number between `minimum` and what an item config can carry (click's IntRange
    would print the 19-digit upper bound in every help line)."""

    name = "integer"

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        try:
            number = value if isinstance(value, int) else int(str(value).strip(), 10)
        except ValueError:
            self.fail(f"{value!r} is not a whole number", param, ctx)
        if not self.minimum <= number <= MAX_QUANTITY:
            self.fail(f"{value!r} is not between {self.minimum} and {MAX_QUANTITY}", param, ctx)
        return number


class _Size(ByteSize):
    """A ByteSize between `minimum` and what an item config can carry."""

    def __init__(self, minimum: int) -> None:
        self.minimum = minimum

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        size = super().convert(value, param, ctx)
        if not self.minimum <= size <= MAX_QUANTITY:
            self.fail(
                f"{value!r} is not between {self.minimum} and {MAX_QUANTITY} bytes", param, ctx
            )
        return size


def _runtime_types(
    _ctx: click.Context, _param: click.Parameter, value: Sequence[str]
) -> tuple[str, ...]:
    for name in value:
        if not RUNTIME_TYPE.match(name):
            raise click.BadParameter(
                f"{name!r}: a runtime type is letters, digits and . _ - (crun, runc, docker)"
            )
    return tuple(dict.fromkeys(value))


@click.group()
def cloud() -> None:
    """The reference cloud: serve units, publish test images, push desired statuses."""


@cloud.command("serve")
@cloud_dir_option
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port units dial on plain ws with --insecure, on 127.0.0.1 (0 picks a free one; "
    "see cloud.json).",
)
@click.option(
    "--operator-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of the operator HTTP API on 127.0.0.1 (0 picks a free one; see cloud.json). "
    "Every request needs the bearer token in <cloud-dir>/operator.token.",
)
@click.option("--registry", default=None, help="Use this registry URL instead of starting one.")
@click.option(
    "--blob-urls-delay",
    type=click.FloatRange(0, 3600),
    default=0.0,
    help="Answer requestBlobUrls after this many seconds (a slow cloud, for tests).",
)
@blob_serving_options
@click.option(
    "--insecure",
    is_flag=True,
    help="Serve units on plain ws on --port (loopback), without provisioning, discovery or "
    "certificates: for tests and the demo.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the HTTPS and wss listeners bind (0.0.0.0 for every interface).",
)
@click.option(
    "--name",
    "names",
    multiple=True,
    metavar="NAME",
    help="A DNS name or address units reach the cloud by (repeat); the first is put in the "
    "URLs it advertises. Loopback names are always in its certificate.",
)
@click.option(
    "--https-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port of provisioning and discovery. 0: the port of the last start (kept in "
    "cloud.db: provisioned units know it), else a free one; see cloud.json.",
)
@click.option(
    "--wss-port",
    type=click.IntRange(0, 65535),
    default=0,
    show_default=True,
    help="Port units dial over wss. 0: the port of the last start (kept in cloud.db), else "
    "a free one.",
)
@click.option(
    "--token-ttl",
    type=float,
    default=3600.0,
    show_default=True,
    callback=positive,
    help="Seconds a discovery token opens the wss endpoint; units run discovery again before.",
)
@click.option(
    "--cert-days",
    type=click.IntRange(1, 36500),
    default=365,
    show_default=True,
    help="Days a unit certificate issued at provisioning is valid.",
)
@click.option(
    "--keepalive",
    type=float,
    default=20.0,
    show_default=True,
    callback=positive,
    help="Seconds between pings to each unit; a unit whose pong is this late again is "
    "dropped. Raise it above the round trip for units on slower links (as `aoscore agent "
    "--keepalive`); opening handshakes may take three times as long.",
)
@with_logs
def cloud_serve(
    cloud_dir: Path,
    port: int,
    operator_port: int,
    registry: str | None,
    blob_urls_delay: float,
    signing: str,
    alg: str | None,
    base: str | None,
    dead_first: bool,
    insecure: bool,
    host: str,
    names: tuple[str, ...],
    https_port: int,
    wss_port: int,
    token_ttl: float,
    cert_days: int,
    keepalive: float,
    log_level: str,
    log_format: str,
) -> None:
    """Serve units until SIGINT or SIGTERM.

    By default over TLS with the cloud's own CA (made in <cloud-dir>/tls on first start and
    kept): units provision (`aoscore cloud token new` gives their one-use tokens), run
    discovery over HTTPS and dial wss with their certificate and the discovery token.
    cloud.json names the endpoints and the CA (`cloudCa`) units trust at provisioning.
    The HTTPS and wss ports are kept in cloud.db and served again by later starts that leave
    --https-port and --wss-port at 0, since provisioned units only know the discovery URL of
    their provisioning; a kept port that is taken now exits 1 naming it (free it, or choose
    another with the option). Operators use the HTTP API on loopback (--operator-port) either
    way, with the token in <cloud-dir>/operator.token (made on first start, 0600).
    """
    from ..cloud.ca import general_names
    from ..cloud.https import TlsSettings
    from ..cloud.server import BlobServing
    from ..cloud.service import serve_cloud

    logs.configure(log_level, log_format)
    with exit_codes():
        serving = BlobServing(signing, alg, base, dead_first)
        tls = None
        if not insecure:
            tls = TlsSettings(host, names, https_port, wss_port, token_ttl, cert_days)
            general_names(tls.server_names())
    run(
        serve_cloud(
            cloud_dir,
            port=port,
            registry_url=registry,
            blob_urls_delay_s=blob_urls_delay,
            serving=serving,
            tls=tls,
            operator_port=operator_port,
            keepalive_s=keepalive,
        )
    )


@cloud.group("token")
def cloud_token() -> None:
    """One-use provisioning tokens: one per unit to provision."""


@cloud_token.command("new")
@cloud_dir_option
@click.option(
    "--count", type=click.IntRange(1, 10000), default=1, show_default=True, help="How many."
)
def cloud_token_new(cloud_dir: Path, count: int) -> None:
    """Make COUNT provisioning tokens and print them, one a line.

    Each provisions one unit once (`aoscore agent --provision-token`); only their hashes are
    kept, so a token not written down is lost. The cloud need not be running.
    """
    from ..cloud.provisioning import DB_FILE, Registrar

    logs.configure("warning")
    with exit_codes():
        registrar = Registrar(cloud_dir / DB_FILE)
        try:
            tokens = registrar.new_tokens(count)
        finally:
            registrar.close()
    click.echo("\n".join(tokens))


@cloud.command("blobs")
@cloud_dir_option
@blob_serving_options
def cloud_blobs(
    cloud_dir: Path, signing: str, alg: str | None, base: str | None, dead_first: bool
) -> None:
    """Change how the running cloud serves blobs (signing, URLs); prints the new setting."""
    from ..cloud.client import operate, operator_token, operator_url
    from ..cloud.server import BlobServing

    with exit_codes():
        serving = BlobServing(signing, alg, base, dead_first)
        url, token = operator_url(cloud_dir), operator_token(cloud_dir)
        reply = run(operate(url, {"op": "blobs", **serving.describe()}, token=token))
    if not reply.get("ok"):
        fail(str(reply.get("error")))
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
    from ..cloud.state import CloudState
    from ..crypto.pki import ROOT_FILE, init_pki

    folder = CloudState(cloud_dir).pki_dir
    with exit_codes():
        pki = init_pki(folder, key_type, force=force)
    click.echo(f"{folder / ROOT_FILE}  (chain {pki.chain_name}, {pki.alg})")


@cloud.command("publish")
@click.argument("name")
@cloud_dir_option
@click.option("--registry", default=None, help="Registry URL (default: the running cloud's).")
@click.option(
    "--image",
    "image_ref",
    default=None,
    metavar="REF",
    help="Publish this existing image instead of building a test image: docker-daemon:IMAGE, "
    "oci:DIR[:TAG], docker-archive:FILE or docker://HOST/NAME:TAG (every platform of an "
    "index; its entrypoint, cmd, env, workdir, user and healthcheck are kept).",
)
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
@click.option(
    "--cpu-limit",
    type=_Count(1),
    default=None,
    metavar="DMIPS",
    help="Item config quotas.cpuDmipsLimit: the CPU one instance may use, in DMIPS. Without "
    "--requested-cpu an instance books the node's CPU ratio of it (50 % by default).",
)
@click.option(
    "--ram-limit",
    type=_Size(1),
    default=None,
    help="Item config quotas.ramLimit: the RAM one instance may use: 512MiB, 2G or bytes. "
    "Without --requested-ram an instance books the node's RAM ratio of it (50 % by default).",
)
@click.option(
    "--requested-cpu",
    type=_Count(0),
    default=None,
    metavar="DMIPS",
    help="Item config requestedResources.cpu: the DMIPS one instance books on its node when "
    "placed (clamped to --cpu-limit).",
)
@click.option(
    "--requested-ram",
    type=_Size(0),
    default=None,
    help="Item config requestedResources.ram: the RAM one instance books on its node when "
    "placed: 512MiB, 2G or bytes (clamped to --ram-limit).",
)
@click.option(
    "--runtime",
    "runtimes",
    multiple=True,
    callback=_runtime_types,
    metavar="TYPE",
    help="Item config runtimes: a runtime type the item may run on (crun, runc, docker); "
    "repeat for several. None given: any of crun, docker, runc.",
)
@click.option(
    "--pids-limit",
    type=_Count(1),
    default=None,
    metavar="N",
    help="Item config quotas.pidsLimit: how many processes one instance may run.",
)
def cloud_publish(
    name: str,
    cloud_dir: Path,
    registry: str | None,
    image_ref: str | None,
    healthcheck: str | None,
    start_period: float | None,
    size: int,
    cpu_limit: int | None,
    ram_limit: int | None,
    requested_cpu: int | None,
    requested_ram: int | None,
    runtimes: tuple[str, ...],
    pids_limit: int | None,
) -> None:
    """Build a busybox test image NAME (or take --image), push it, print its indexDigest.

    Any of the item config options (limits, requests, runtimes) adds AosCore's item config:
    a JSON blob the manifest names as aosItemConfig, served and signed like the image's other
    blobs, which the unit reads to place and limit the item's instances.

    With --image, skopeo copies the image into the registry as it is (Docker v2 or OCI), a
    single manifest is wrapped in an OCI index, and every document gets a blob copy, so every
    URL the cloud hands out serves its digest.
    """
    from ..cloud.service import publish

    if not IMAGE_NAME.match(name):
        raise click.BadParameter(
            f"{name!r}: use lowercase letters, digits and . _ -", param_hint="NAME"
        )
    if image_ref is not None:
        _publish_existing(
            cloud_dir,
            name,
            registry,
            image_ref,
            builder_options={
                "--healthcheck": healthcheck is not None,
                "--start-period": start_period is not None,
                "--size": size != 0,
                "--cpu-limit": cpu_limit is not None,
                "--ram-limit": ram_limit is not None,
                "--requested-cpu": requested_cpu is not None,
                "--requested-ram": requested_ram is not None,
                "--runtime": bool(runtimes),
                "--pids-limit": pids_limit is not None,
            },
        )
        return
    item_config = item_config_of(
        cpu_limit=cpu_limit,
        ram_limit=ram_limit,
        pids_limit=pids_limit,
        requested_cpu=requested_cpu,
        requested_ram=requested_ram,
        runtimes=runtimes,
    )
    logs.configure("warning")
    check = ["/bin/sh", "-c", healthcheck] if healthcheck else None
    with exit_codes():
        image = publish(
            cloud_dir,
            name,
            registry_url=registry,
            healthcheck=check,
            health_start_period_s=start_period,
            extra_layer_bytes=size,
            item_config=item_config,
        )
    click.echo(image.index_digest)


def _publish_existing(
    cloud_dir: Path,
    name: str,
    registry: str | None,
    image_ref: str,
    builder_options: dict[str, bool],
) -> None:
    """`publish --image`: the image keeps its own config, so the test builder's options (and
    an item config, which would change its manifests) are refused with exit 2."""
    from ..cloud.imports import import_image

    given = [option for option, used in builder_options.items() if used]
    if given:
        raise click.UsageError(f"{', '.join(given)}: not with --image (the image keeps its own)")
    logs.configure("warning")
    with exit_codes():
        image = import_image(cloud_dir, name, image_ref, registry_url=registry)
    click.echo(image.index_digest)


@cloud.command("push")
@click.option("--unit", required=True, callback=system_id, help="The unit's systemId.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@cloud_dir_option
@click.option(
    "--timeout",
    type=float,
    default=30.0,
    show_default=True,
    callback=positive,
    help="Seconds to wait for the unit's ack.",
)
def cloud_push(unit: str, file: Path, cloud_dir: Path, timeout: float) -> None:
    """Send the desired status in FILE to a unit and print its ack.

    The cloud reads it with the protocol's parser too, stores it with the unit's next seq and
    sends it; a refusal prints the parser's path and reason and exits 1. A unit that does not
    answer in time gets it when it connects (exit 1, with that said).
    """
    from ..cloud.client import load_desired_status, operator_token, operator_url, push

    try:
        ds = load_desired_status(file)
    except ProtocolError as exc:
        fail(f"{file}: {exc.path}: {exc.reason}", 2)
    except OSError as exc:
        fail(f"{file}: cannot read: {exc.strerror}", 2)
    with exit_codes():
        url, token = operator_url(cloud_dir), operator_token(cloud_dir)
        reply = run(push(url, unit, ds, timeout, token=token))
    if reply.get("ok"):
        click.echo(f"ack unit={unit} txn={reply['txn']} seq={reply.get('seq')}")
        return
    if "path" in reply:
        fail(f"the cloud refused the desired status: {reply['path']}: {reply.get('reason')}")
    if "nack" in reply:
        click.echo(f"nack unit={unit} txn={reply.get('txn')} reason={reply.get('error')!r}")
        sys.exit(1)
    fail(str(reply.get("error")))


def _wanted_items(_ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list:
    from ..cloud.desired import parse_item

    try:
        return [parse_item(v) for v in values]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _labels(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict:
    out: dict[str, list[str]] = {}
    for value in values:
        item, eq, label = value.partition("=")
        if not eq or not item or not label:
            raise click.BadParameter(f"{value!r}: expected ITEM=LABEL")
        out.setdefault(item, []).append(label)
    return out


@cloud.command("desired")
@click.option(
    "--item",
    "items",
    multiple=True,
    required=True,
    callback=_wanted_items,
    metavar="ID=DIGEST[:INSTANCES]",
    help="An item by the indexDigest `cloud publish` printed, with its instance count "
    "(default 1). Repeat for more items.",
)
@click.option(
    "--version", "item_version", default="1.0.0", show_default=True, help="Items' version."
)
@click.option(
    "--subject", default="subj1", show_default=True, help="The subject instances run for."
)
@click.option("--node", "nodes", multiple=True, help="A node to keep provisioned (repeat).")
@click.option("--paused", multiple=True, help="A node to pause: its instances move (repeat).")
@click.option(
    "--label",
    "labels",
    multiple=True,
    callback=_labels,
    metavar="ITEM=LABEL",
    help="A node label an item's instances need (repeat).",
)
def cloud_desired(
    items: list,
    item_version: str,
    subject: str,
    nodes: tuple[str, ...],
    paused: tuple[str, ...],
    labels: dict,
) -> None:
    """Print a desired status (v7 JSON) for `cloud push`: each --item as a service."""
    from ..cloud.desired import build_desired
    from ..protocol import dump_message

    ds = build_desired(
        items, version=item_version, subject=subject, nodes=nodes, paused=paused, labels=labels
    )
    click.echo(dump_message(ds).decode())


@cloud.command("timeline")
@click.option("--unit", required=True, callback=system_id, help="The systemId of the unit to read.")
@cloud_dir_option
@click.option("--last", is_flag=True, help="Only the last unitStatus.")
@click.option(
    "--check",
    is_flag=True,
    help="Check the timeline in the unit's order (bootId, seq) instead of printing it: one "
    "line per status, `boot=ID seq=N` and ok or its flags (duplicate, late, `K missing "
    "before`), then one line of counts: statuses=N boots=N duplicates=N late=N missing=N. "
    "Exit 1 if any status the unit made never arrived.",
)
def cloud_timeline(unit: str, cloud_dir: Path, last: bool, check: bool) -> None:
    """Print the unitStatus timeline of a unit, one JSON object per line.

    Read from the cloud's database, so it works whether `cloud serve` runs or not. A unit
    with no status recorded (never heard of, or a mistyped id) exits 1 saying so.
    """
    from ..cloud.ordering import in_unit_order, summary
    from ..cloud.state import CloudState

    with exit_codes():
        state = CloudState(cloud_dir)
        try:
            records = state.timeline(unit)
        finally:
            state.close()
    if not records:
        fail(f"no status recorded for unit {unit} in {cloud_dir}")
    if not check:
        for record in records[-1:] if last else records:
            click.echo(orjson.dumps(record).decode())
        return
    ordered = in_unit_order(records)
    for o in ordered:
        flags = [name for name, on in (("duplicate", o.duplicate), ("late", o.late)) if on]
        if o.gap_before:
            flags.append(f"{o.gap_before} missing before")
        click.echo(f"boot={o.boot_id} seq={o.seq} {' '.join(flags) or 'ok'}")
    counts = summary(ordered)
    click.echo(" ".join(f"{k}={v}" for k, v in counts.items()))
    if counts["missing"]:
        sys.exit(1)


@cloud.command("units")
@cloud_dir_option
@click.option("--json", "as_json", is_flag=True, help="The API's answer as it is (one JSON).")
def cloud_units(cloud_dir: Path, as_json: bool) -> None:
    """List the units the running cloud knows: id, online or offline, health, last status,
    desired seq, transport (ws or poll; - when not seen since the cloud started), last seen
    (UTC) and item states; - for anything absent.

    A unit that polls counts as online for 5 minutes after a poll (or 3 of its intervals).
    """
    from ..cloud.client import operate, operator_token, operator_url

    with exit_codes():
        url, token = operator_url(cloud_dir), operator_token(cloud_dir)
        reply = run(operate(url, {"op": "units"}, token=token))
    if not reply.get("ok"):
        fail(str(reply.get("error")))
    if as_json:
        click.echo(orjson.dumps(reply["units"]).decode())
        return
    for u in reply["units"]:
        click.echo(unit_line(u))


def unit_line(unit: dict[str, Any]) -> str:
    """One line of `cloud units`: `key=value` fields, `-` for a value the cloud lacks."""
    view = unit.get("view") or {}
    items = ",".join(f"{k}:{v}" for k, v in sorted((view.get("items") or {}).items()))
    seen = unit.get("lastSeen")
    if isinstance(seen, (int, float)):
        seen = datetime.fromtimestamp(seen, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fields = {
        "health": unit.get("health"),
        "lastSeq": unit.get("lastSeq"),
        "statuses": unit.get("statuses"),
        "desiredSeq": unit.get("desiredSeq"),
        "transport": unit.get("transport"),
        "lastSeen": seen,
        "items": items,
    }
    shown = " ".join(f"{k}={'-' if v is None or v == '' else v}" for k, v in fields.items())
    return f"{unit.get('id')} {'online' if unit.get('connected') else 'offline'} {shown}"
