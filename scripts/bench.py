"""Benchmarks of aoscore-py, run through `scripts/bench NAME --json FILE`.

supersede: with the real agent, cloud, registry and Docker engine, the time from the
superseding desired status's arrival to the end of the old phase's task, in downloading,
launching and waitingActive (several runs each; the median is reported).

download: the image manager fetching, checking, verifying and committing a multi-layer item from
a loopback registry, against `skopeo copy` of the same image to an OCI folder in the same run
(interleaved, best of N each), plus what a kill -9 in the middle makes the agent fetch twice.

phase: one committed phase change (`DurableMachine.fire`) against a raw `sqlite3` one-row commit
(WAL, `synchronous=FULL`) in the same folder, interleaved, several hundred samples each; medians.

link: the cloud link's resend after a nack with retryAfter R, from a loopback WebSocket peer's
view (first frame's arrival to the resent frame's), against a plain `asyncio.sleep(R)` in the
same event loop, interleaved; medians and p90. Needs no Docker engine.

stop: `DockerRuntime.stop_container` of a running instance whose command exits on SIGTERM,
against `docker stop` of the same kind of container with the Docker CLI (whose time includes
starting the CLI process), interleaved; medians and p90.

compose: the agent (a desired status received -> the cloud told the instances are active)
starting 10 instances, then changing one item's version, against `docker-compose up -d` of the
same 10 containers from the images the agent loaded, then of the one changed service, in the
same run; medians over runs, and where the agent's time goes (scripts/benchlib/compose.py).

fleet: N simulated units (real identity, discovery, TLS, link and outbox, in a few processes,
no Docker) on one reference cloud process; one desired status pushed to all, timed until every
unit's full status naming it is in the timeline: p50, p99, total, the cloud's RSS
(scripts/benchlib/fleet.py).

storm: the agent's resident size calm, at the end of a reconnect storm (a loopback cloud that
sends an oversized frame after each connect; redial schedule squeezed so hundreds happen) and
calm again (scripts/benchlib/storm.py).

powercut: the crash-point matrix and N random cuts on lossy file systems (rows, converged), and
one update cycle's time on the lossy file systems over plain folders (scripts/benchlib/powercut.py).

model: the stateful model of a three-node unit for N examples (scripts/benchlib/model.py).

outbox: unit statuses through the cloud link's durable outbox (enqueue, send, ack, delete) to
a loopback peer that acks each, against raw one-row SQLite commits in the same folder;
alternating rounds, statuses per second and their ratio (scripts/benchlib/outbox.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import click
import orjson
from benchlib import json_option
from websockets.asyncio.server import ServerConnection, serve

from aoscore_py.blobs.download import blob_client
from aoscore_py.blobs.store import BlobStore, digest_hex
from aoscore_py.cloud.oci import OciImage, blob_url, build_test_image, push_image
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.state import CloudState
from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.cm.communication.outbox import OutboxLimits
from aoscore_py.cm.imagemanager.manager import ImageManager, ImagePolicy
from aoscore_py.crypto.pki import Pki, init_pki
from aoscore_py.errors import AosError
from aoscore_py.iam.tls import client_context
from aoscore_py.logs import configure as configure_logs
from aoscore_py.powercut.testbed import (
    CloudProcess,
    publish_test_set,
    refetch_after_kill,
    scenario,
    supersede_run,
)
from aoscore_py.protocol import (
    Ack,
    BlobUrlInfo,
    DesiredItem,
    DesiredStatus,
    Envelope,
    Identity,
    ItemState,
    Nack,
    UnitStatus,
    dump_frame,
    new_header,
    parse_frame,
)
from aoscore_py.sm.docker_runtime import (
    LABEL_ITEM,
    LABEL_UNIT,
    ContainerSpec,
    DockerRuntime,
    container_name,
)
from aoscore_py.storage import Storage

_MIB = 1 << 20
GOAL_RATIO = 1.1
DOWNLOAD_LAYERS = 4
DOWNLOAD_TAG = "latest"


@click.group()
def bench() -> None:
    """aoscore-py benchmarks."""


def _write_result(json_path: Path, result: object) -> None:
    """Every benchmark's figures, as JSON, in the file given with --json."""
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {json_path}")


@bench.command()
@json_option
@click.option(
    "--runs", type=click.IntRange(1, 50), default=5, show_default=True, help="Runs per phase."
)
def supersede(json_path: Path, runs: int) -> None:
    """Supersede latency per phase (message received -> old phase task finished)."""
    work = Path(tempfile.mkdtemp(prefix="aoscore-bench-"))
    runtime = DockerRuntime()
    samples: dict[str, list[float]] = {"downloading": [], "launching": [], "waitingActive": []}
    with Registry(work / "registry") as registry:
        cloud = CloudProcess(work / "cloud", registry.url).start()
        slow = CloudProcess(work / "slow-cloud", registry.url, blob_urls_delay_s=2.0)
        try:
            images = publish_test_set(cloud.cloud_dir, registry.url, "bench")
            for name, image in images.items():
                CloudState(slow.cloud_dir).add_blobs(name, image.blobs)
            slow.start()
            a, b, c = images["bench-alpha"], images["bench-beta"], images["bench-gamma"]
            cases = {
                "downloading": (
                    slow,
                    scenario([("svc-a", a)]),
                    scenario([("svc-b", b)], num_instances=1),
                ),
                "launching": (
                    cloud,
                    scenario([("svc-a", a), ("svc-c", c)], num_instances=6),
                    scenario([("svc-b", b)], num_instances=1),
                ),
                "waitingActive": (
                    cloud,
                    scenario([("svc-s", images["bench-stuck"])], num_instances=1),
                    scenario([("svc-b", b)], num_instances=1),
                ),
            }
            for phase, (where, first, second) in cases.items():
                for _ in range(runs):
                    unit = f"bench-{uuid.uuid4().hex[:8]}"
                    run = supersede_run(where, runtime, work, unit, first, second, phase)
                    if run.superseded_in != phase or not run.convergence.ok:
                        raise click.ClickException(
                            f"{phase}: superseded in {run.superseded_in}, "
                            f"converged={run.convergence.ok} {run.convergence.problems}"
                        )
                    samples[phase].append(run.latency_s)
        finally:
            slow.stop()
            cloud.stop()
    runtime.close()
    print(f"{'phase':<14} {'median ms':>10} {'min ms':>8} {'max ms':>8}  runs")
    for phase, values in samples.items():
        print(
            f"{phase:<14} {statistics.median(values) * 1000:>10.2f} "
            f"{min(values) * 1000:>8.2f} {max(values) * 1000:>8.2f}  {len(values)}"
        )
    result = {f"{phase}_s": round(statistics.median(v), 6) for phase, v in samples.items()}
    _write_result(json_path, result)


class _SignedBlobUrls:
    """Stands in for the cloud's requestBlobUrls round trip: the registry URL of each blob and a
    signature over its sha256, made once up front so that only the agent's side is timed."""

    def __init__(self, registry_url: str, image: OciImage, pki: Pki) -> None:
        self._infos = {
            digest: BlobUrlInfo(
                digest=digest,
                urls=(blob_url(registry_url, image.name, digest),),
                sha256=bytes.fromhex(digest_hex(digest)),
                size=len(data),
                sign_info=pki.sign({"sha256": bytes.fromhex(digest_hex(digest))}),
            )
            for digest, data in image.blobs.items()
        }

    async def request_blob_urls(self, digests: Sequence[str]) -> list[BlobUrlInfo]:
        return [self._infos[d] for d in digests if d in self._infos]


async def _ours_once(
    data_dir: Path, source: _SignedBlobUrls, ds: DesiredStatus, pki: Pki, image: OciImage
) -> float:
    """One download into an empty data dir, timed from opening the store to closing it: a cold
    start on our side too, since skopeo's time runs from its launch to its exit.

    Raises:
        click.ClickException: the item did not end pending, or a blob is missing from the store.
    """
    started = time.perf_counter()
    storage = Storage(data_dir)
    try:
        store = BlobStore(data_dir)
        policy = ImagePolicy(trusted_roots=(pki.root,))
        async with blob_client(policy.download, 30.0, client_context()) as http:
            records = await ImageManager(storage, store, source, http, policy).download(ds)
    finally:
        storage.close()
    elapsed = time.perf_counter() - started
    wrong = [r for r in records if r.state != ItemState.PENDING]
    if wrong or len(records) != len(ds.items):
        raise click.ClickException(f"ours: the download did not end pending: {records}")
    missing = set(image.blobs) - set(store.stored())
    if missing:
        raise click.ClickException(f"ours: blobs missing from the store: {sorted(missing)}")
    return elapsed


def _skopeo_setup(work: Path) -> tuple[list[str], dict[str, str]]:
    """The skopeo command prefix and environment: a policy that accepts the unsigned test image,
    and empty registry settings, so that no mirror, lookaside or credential lookup adds work
    or reaches beyond loopback."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise click.ClickException("skopeo not found on PATH: install the Debian package `skopeo`")
    conf = work / "skopeo"
    (conf / "registries.d").mkdir(parents=True)
    (conf / "tmp").mkdir()
    (conf / "policy.json").write_bytes(
        orjson.dumps({"default": [{"type": "insecureAcceptAnything"}]})
    )
    (conf / "registries.conf").write_text("")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["CONTAINERS_REGISTRIES_CONF"] = str(conf / "registries.conf")
    args = [
        skopeo,
        "--policy",
        str(conf / "policy.json"),
        "--registries.d",
        str(conf / "registries.d"),
        "--tmpdir",
        str(conf / "tmp"),
    ]
    return args, env


def _peer_once(
    prefix: list[str], env: dict[str, str], source: str, oci_dir: Path, image: OciImage
) -> float:
    """One `skopeo copy` of the whole image (index included, as ours) into an empty OCI folder.

    Raises:
        click.ClickException: skopeo failed, or a blob is missing from the folder.
    """
    args = [
        *prefix,
        "copy",
        "--quiet",
        "--all",
        "--retry-times",
        "0",
        "--src-tls-verify=false",
        "--src-no-creds",
        f"docker://{source}",
        f"oci:{oci_dir}:{DOWNLOAD_TAG}",
    ]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise click.ClickException(
            f"skopeo copy exited with {done.returncode}: {done.stderr.decode(errors='replace')}"
        )
    stored = {f"sha256:{p.name}" for p in (oci_dir / "blobs" / "sha256").iterdir()}
    missing = set(image.blobs) - stored
    if missing:
        raise click.ClickException(f"skopeo: blobs missing from {oci_dir}: {sorted(missing)}")
    return elapsed


def _rate(item_bytes: int, seconds: float) -> str:
    return f"{item_bytes / _MIB / seconds:.1f}"


@bench.command()
@json_option
@click.option(
    "--runs",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Runs per side, interleaved; the best counts.",
)
@click.option(
    "--size-mib",
    type=click.IntRange(1, 1024),
    default=50,
    show_default=True,
    help=f"Pseudo-random bytes of the item, over {DOWNLOAD_LAYERS} layers.",
)
def download(json_path: Path, runs: int, size_mib: int) -> None:
    """Item download (fetch, digest, signature, fsync, commit) against skopeo copy."""
    size_bytes = size_mib * _MIB
    work = Path(tempfile.mkdtemp(prefix="aoscore-bench-"))
    ours: list[float] = []
    peer: list[float] = []
    try:
        prefix, env = _skopeo_setup(work)
        image = build_test_image(
            "bench-download", extra_layer_bytes=size_bytes, extra_layers=DOWNLOAD_LAYERS
        )
        item_bytes = sum(len(b) for b in image.blobs.values())
        pki = init_pki(work / "pki", "ec")
        ds = DesiredStatus(
            items=(
                DesiredItem(
                    Identity(id="bench-item", type="service"),
                    "1.0.0",
                    image.index_digest,
                    Identity(id="owner1"),
                ),
            ),
            certificates=pki.certificates(),
            certificate_chains=(pki.chain(),),
        )
        with Registry(work / "registry") as registry:
            push_image(registry.url, image, tag=DOWNLOAD_TAG)
            source = _SignedBlobUrls(registry.url, image, pki)
            reference = f"127.0.0.1:{registry.port}/{image.name}:{DOWNLOAD_TAG}"
            for n in range(runs):
                data_dir = work / f"ours-{n}"
                ours.append(asyncio.run(_ours_once(data_dir, source, ds, pki, image)))
                shutil.rmtree(data_dir)
                oci_dir = work / f"peer-{n}"
                peer.append(_peer_once(prefix, env, reference, oci_dir, image))
                shutil.rmtree(oci_dir)
            runtime = DockerRuntime()
            try:
                refetch = refetch_after_kill(
                    work / "refetch",
                    registry.url,
                    runtime,
                    size_bytes=size_bytes,
                    layers=DOWNLOAD_LAYERS,
                )
            finally:
                runtime.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours_s, peer_s = min(ours), min(peer)
    ratio = ours_s / peer_s
    verdict = "goal met" if ratio <= GOAL_RATIO else "goal missed"
    print(
        f"download of a {size_mib} MiB item in {DOWNLOAD_LAYERS + 1} layers "
        f"({len(image.blobs)} blobs, {item_bytes} bytes) from a loopback registry, "
        f"best of {runs}"
    )
    print(f"{'side':<14} {'best s':>8} {'MiB/s':>7}  every run s")
    for name, values in (("ours", ours), ("peer (skopeo)", peer)):
        best = min(values)
        every = " ".join(f"{v:.3f}" for v in values)
        print(f"{name:<14} {best:>8.3f} {_rate(item_bytes, best):>7}  {every}")
    print(f"ratio ours/peer {ratio:.3f} (goal <= {GOAL_RATIO}): {verdict}")
    print(
        f"refetch after kill -9: {refetch.served_before_kill} bytes served before the kill, "
        f"{refetch.served_total} in total for {refetch.item_bytes}: "
        f"fraction {refetch.fraction:.4f}"
    )
    result = {
        "ours_s": round(ours_s, 6),
        "peer_s": round(peer_s, 6),
        "ratio": round(ratio, 4),
        "refetch_fraction": round(refetch.fraction, 4),
        "item_bytes": item_bytes,
        "goal_ratio": GOAL_RATIO,
        "runs": {"ours_s": [round(v, 6) for v in ours], "peer_s": [round(v, 6) for v in peer]},
    }
    _write_result(json_path, result)


PHASE_GOAL_RATIO = 2.0
# Untimed rounds first: past SQLite's default wal_autocheckpoint (1000 pages), both WAL files
# have been checkpointed and are rewritten in place, as in a long-running agent, so neither side
# is timed while its WAL file still grows (a growing file makes each fsync dearer).
PHASE_WARMUP = 1100


class _RawCommit:
    """The fair peer of a durable move: a one-row UPDATE in its own `BEGIN IMMEDIATE`
    transaction, in WAL mode with `synchronous=FULL`, through the standard `sqlite3` module."""

    def __init__(self, path: Path) -> None:
        import sqlite3

        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=wal")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS peer (id INTEGER PRIMARY KEY, n INTEGER, at REAL)"
        )
        self._conn.execute("INSERT OR IGNORE INTO peer VALUES (1, 0, 0)")

    def once(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.execute("UPDATE peer SET n = n + 1, at = ? WHERE id = 1", (time.time(),))
        self._conn.execute("COMMIT")

    def count(self) -> int:
        return int(self._conn.execute("SELECT n FROM peer WHERE id = 1").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


def _quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile `q` (0..1) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def _print_sides(sides: Sequence[tuple[str, Sequence[float]]], *, width: int) -> None:
    """One line per side of a same-run comparison: median, p90, min and max in ms, samples."""
    print(f"{'side':<{width}} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}  samples")
    for name, values in sides:
        print(
            f"{name:<{width}} {statistics.median(values) * 1000:>10.3f} "
            f"{_quantile(values, 0.9) * 1000:>8.3f} {min(values) * 1000:>8.3f} "
            f"{max(values) * 1000:>8.3f}  {len(values)}"
        )


@bench.command()
@json_option
@click.option(
    "--samples",
    type=click.IntRange(50, 100_000),
    default=600,
    show_default=True,
    help="Timed samples per side, interleaved.",
)
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Folder (disk) to put both databases in; default a new temp folder under /tmp.",
)
def phase(json_path: Path, samples: int, base_dir: Path | None) -> None:
    """Durable phase change (DurableMachine.fire) against a raw one-row SQLite commit."""
    # Imported here, not at the top, so that this bench runs whatever else moves.
    import peewee

    from statemachine import UPDATE_CYCLE, DurableMachine

    work = Path(tempfile.mkdtemp(prefix="aoscore-bench-phase-", dir=base_dir or "/tmp"))
    digest = "sha256:" + "ab" * 32
    move_s: list[float] = []
    raw_s: list[float] = []
    db = peewee.SqliteDatabase(
        str(work / "machine.db"),
        pragmas={"journal_mode": "wal", "synchronous": "full", "foreign_keys": 1},
    )
    raw = _RawCommit(work / "raw.db")
    try:
        machine = DurableMachine("bench", UPDATE_CYCLE, db)
        total = PHASE_WARMUP + samples
        for i in range(total):
            event = "start" if machine.resting else "done"
            payload = {"ds": digest, "move": i}
            # Alternate which side goes first so neither always follows the other's fsync.
            for side in ("move", "raw") if i % 2 else ("raw", "move"):
                started = time.perf_counter()
                if side == "move":
                    machine.fire(event, payload, "bench")
                else:
                    raw.once()
                elapsed = time.perf_counter() - started
                if i >= PHASE_WARMUP:
                    (move_s if side == "move" else raw_s).append(elapsed)
        if machine.revision != total or raw.count() != total:
            raise click.ClickException(
                f"lost writes: {machine.revision} moves, {raw.count()} raw commits of {total}"
            )
        if len(machine.journal()) != total:
            raise click.ClickException("the journal does not hold one row per move")
    finally:
        raw.close()
        db.close()
        shutil.rmtree(work, ignore_errors=True)

    move_ms = statistics.median(move_s) * 1000
    raw_ms = statistics.median(raw_s) * 1000
    ratio = move_ms / raw_ms
    verdict = "goal met" if ratio <= PHASE_GOAL_RATIO else "goal missed"
    print(f"phase change against a raw one-row commit (WAL, synchronous=FULL) in {work.parent}")
    _print_sides((("move", move_s), ("raw commit", raw_s)), width=12)
    print(f"ratio move/raw {ratio:.3f} (goal <= {PHASE_GOAL_RATIO}): {verdict}")
    result = {
        "move_ms": round(move_ms, 4),
        "raw_commit_ms": round(raw_ms, 4),
        "ratio": round(ratio, 4),
        "move_p90_ms": round(_quantile(move_s, 0.9) * 1000, 4),
        "raw_commit_p90_ms": round(_quantile(raw_s, 0.9) * 1000, 4),
        "samples": samples,
        "goal_ratio": PHASE_GOAL_RATIO,
    }
    _write_result(json_path, result)


LINK_SYSTEM_ID = "bench-link"
LINK_WAIT_S = 10.0  # how long one sample waits for a frame before the bench fails: a guard


class _NackingCloud:
    """A loopback cloud: nacks each unitStatus once with retryAfter and acks its resend.

    For each resent message it queues (txn, first arrival, resend arrival, same bytes), the
    times read with `time.perf_counter` as each frame comes off the socket.
    """

    def __init__(self, retry_after_ms: int) -> None:
        self.retry_after_ms = retry_after_ms
        self.resent: asyncio.Queue[tuple[str, float, float, bool]] = asyncio.Queue()
        self._first: dict[str, tuple[float, bytes | str]] = {}

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            arrived = time.perf_counter()
            env = parse_frame(raw)
            if not isinstance(env.data, UnitStatus):
                continue
            txn = env.header.txn
            first = self._first.pop(txn, None)
            if first is None:
                self._first[txn] = (arrived, raw)
                reply: Nack | Ack = Nack(retry_after=self.retry_after_ms)
            else:
                reply = Ack()
                self.resent.put_nowait((txn, first[0], arrived, first[1] == raw))
            await ws.send(dump_frame(Envelope(new_header(LINK_SYSTEM_ID, txn=txn), reply)))


async def _link_run(retry_after_ms: int, samples: int) -> tuple[list[float], list[float]]:
    """`samples` nacked-then-resent unitStatus messages through a real CloudLink and as many
    plain sleeps of retryAfter in the same loop, interleaved after one untimed round of each.

    Raises:
        click.ClickException: a resend did not come, came under another txn or with other
            bytes, or was not acked.
    """
    cloud = _NackingCloud(retry_after_ms)
    server = await serve(cloud.handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    from benchlib.outbox import bare_link

    # Only the nack can cause a resend within the bench: the ack timeout is far beyond it.
    work = tempfile.TemporaryDirectory(prefix="aoscore-bench-link-")
    storage = Storage(Path(work.name))
    link = bare_link(
        f"ws://127.0.0.1:{port}", LINK_SYSTEM_ID, storage, OutboxLimits(ack_timeout_s=3600.0)
    )
    task = asyncio.create_task(link.run())
    resend_s: list[float] = []
    sleep_s: list[float] = []
    try:
        await asyncio.wait_for(link.connected.wait(), LINK_WAIT_S)
        for i in range(samples + 1):
            for side in ("resend", "sleep") if i % 2 else ("sleep", "resend"):
                if side == "sleep":
                    started = time.perf_counter()
                    await asyncio.sleep(retry_after_ms / 1000)
                    elapsed = time.perf_counter() - started
                else:
                    elapsed = await _link_resend_once(link, cloud)
                if i > 0:
                    (resend_s if side == "resend" else sleep_s).append(elapsed)
    finally:
        await link.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        await server.wait_closed()
        storage.close()
        work.cleanup()
    return resend_s, sleep_s


async def _link_resend_once(link: CloudLink, cloud: _NackingCloud) -> float:
    """Send one unitStatus; the time from its first frame's arrival to its resend's arrival.

    Raises:
        click.ClickException: see `_link_run`.
    """
    txn = await link.send(UnitStatus(is_delta_info=False))
    try:
        resent_txn, first, again, same = await asyncio.wait_for(cloud.resent.get(), LINK_WAIT_S)
    except TimeoutError:
        raise click.ClickException(f"link: no resend of {txn} within {LINK_WAIT_S} s") from None
    if resent_txn != txn or not same:
        raise click.ClickException(f"link: {txn} was resent as {resent_txn} (same bytes: {same})")
    # Untimed: let the ack land so that each sample starts with nothing pending.
    deadline = time.monotonic() + LINK_WAIT_S
    while link.outbox.depth:
        if time.monotonic() > deadline:
            raise click.ClickException(f"link: the ack of {txn} was not taken")
        await asyncio.sleep(0.001)
    return again - first


@bench.command()
@json_option
@click.option(
    "--samples",
    type=click.IntRange(5, 10_000),
    default=30,
    show_default=True,
    help="Timed samples per side, interleaved.",
)
@click.option(
    "--retry-after-ms",
    type=click.IntRange(1, 60_000),
    default=100,
    show_default=True,
    help="The retryAfter of every nack, and the peer's sleep.",
)
def link(json_path: Path, samples: int, retry_after_ms: int) -> None:
    """Resend after a nack (first frame's arrival -> resend's arrival) against asyncio.sleep."""
    # The link logs every nack; formatted as in the agent, but kept off the bench's output.
    with open(os.devnull, "w") as devnull:
        configure_logs("info", stream=devnull)
        try:
            resend_s, sleep_s = asyncio.run(_link_run(retry_after_ms, samples))
        finally:
            logging.getLogger("aoscore").handlers.clear()

    resend_ms = statistics.median(resend_s) * 1000
    sleep_ms = statistics.median(sleep_s) * 1000
    ratio = resend_ms / sleep_ms
    late_ms = resend_ms - retry_after_ms
    print(
        f"resend after a nack with retryAfter {retry_after_ms} ms over a loopback WebSocket, "
        f"against asyncio.sleep({retry_after_ms / 1000:g}) in the same loop"
    )
    _print_sides((("resend", resend_s), ("peer sleep", sleep_s)), width=12)
    print(
        f"ratio resend/sleep {ratio:.3f}; resend median {late_ms:.3f} ms after retryAfter "
        f"(the sleep's: {sleep_ms - retry_after_ms:.3f} ms)"
    )
    result = {
        "resend_ms": round(resend_ms, 4),
        "peer_sleep_ms": round(sleep_ms, 4),
        "ratio": round(ratio, 4),
        "late_ms": round(late_ms, 4),
        "peer_late_ms": round(sleep_ms - retry_after_ms, 4),
        "resend_p90_ms": round(_quantile(resend_s, 0.9) * 1000, 4),
        "peer_sleep_p90_ms": round(_quantile(sleep_s, 0.9) * 1000, 4),
        "retry_after_ms": retry_after_ms,
        "samples": samples,
    }
    _write_result(json_path, result)


STOP_GRACE_S = 10
STOP_WAIT_S = 20.0  # how long a container may take to be running with its trap set: a guard
_SIGTERM_BIT = 1 << 14  # SIGTERM (15) in /proc/PID/status SigCgt


def _docker_cli() -> str:
    """The Debian client that matches the engine, else the one on PATH (as scripts/engines)."""
    if os.access("/usr/bin/docker", os.X_OK):
        return "/usr/bin/docker"
    found = shutil.which("docker")
    if found is None:
        raise click.ClickException("no Docker CLI: neither /usr/bin/docker nor docker on PATH")
    return found


def _load_plain_image(runtime: DockerRuntime, folder: Path) -> str:
    """The tests' plain image (its command exits 0 on SIGTERM), loaded from blobs laid out as
    the image manager does (`<folder>/sha256/<hex>`); a no-op when the engine has it."""
    image = build_test_image("aoscore-test-plain")

    def blob_path(digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return folder / algorithm / hex_digest

    for digest, data in image.blobs.items():
        path = blob_path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return runtime.ensure_image(image.config_digest, image.manifest, blob_path)


def _traps_sigterm(pid: int) -> bool | None:
    """Whether process `pid` catches SIGTERM; None when its /proc entry cannot be read (an
    engine in another PID namespace), in which case the exit code check still holds."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & _SIGTERM_BIT)
    return None


def _running_container(runtime: DockerRuntime, image_id: str, unit: str, side: str, n: int) -> str:
    """Create and start one container through DockerRuntime; return once it runs and, where
    /proc shows it, its shell has set the SIGTERM trap (before that, a stop would wait for the
    SIGKILL, PID 1 ignoring SIGTERM by default).

    Raises:
        click.ClickException: it did not get there within STOP_WAIT_S.
    """
    spec = ContainerSpec(
        name=container_name(unit, side, "bench", n),
        image_id=image_id,
        labels={LABEL_UNIT: unit, LABEL_ITEM: side},
    )
    container_id = runtime.create_container(spec)
    runtime.start_container(container_id)
    deadline = time.monotonic() + STOP_WAIT_S
    state: dict[str, object] = {}
    while time.monotonic() < deadline:
        state = runtime.client.api.inspect_container(container_id)["State"]
        pid = state.get("Pid") if state.get("Status") == "running" else None
        if isinstance(pid, int) and pid > 0 and _traps_sigterm(pid) is not False:
            return container_id
        time.sleep(0.01)
    raise click.ClickException(f"stop: {spec.name} not running within {STOP_WAIT_S} s: {state}")


def _check_exited(runtime: DockerRuntime, container_id: str, side: str) -> None:
    """The container exited through its trap (0), not by SIGKILL after the grace (137).

    Raises:
        click.ClickException: it did not.
    """
    state = runtime.client.api.inspect_container(container_id)["State"]
    if (state["Status"], state["ExitCode"]) != ("exited", 0):
        raise click.ClickException(
            f"stop ({side}): {container_id[:12]} ended {state['Status']} with "
            f"{state['ExitCode']}, not exited 0 through its SIGTERM trap"
        )


def _stop_ours(runtime: DockerRuntime, container_id: str) -> float:
    started = time.perf_counter()
    runtime.stop_container(container_id, timeout_s=STOP_GRACE_S)
    return time.perf_counter() - started


def _stop_cli(cli: str, container_id: str) -> float:
    """One `docker stop`, timed from the CLI's launch to its exit.

    Raises:
        click.ClickException: the CLI failed.
    """
    started = time.perf_counter()
    done = subprocess.run(
        [cli, "stop", "-t", str(STOP_GRACE_S), container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise click.ClickException(
            f"docker stop exited with {done.returncode}: {done.stderr.decode(errors='replace')}"
        )
    return elapsed


@bench.command()
@json_option
@click.option(
    "--samples",
    type=click.IntRange(3, 200),
    default=10,
    show_default=True,
    help="Timed stops per side, interleaved.",
)
def stop(json_path: Path, samples: int) -> None:
    """Instance stop (DockerRuntime.stop_container) against `docker stop` with the Docker CLI.

    Both stop a running container of the plain test image, whose command exits 0 on SIGTERM,
    with a 10 s grace. The CLI's time includes starting the `docker` process, so the ratio
    flatters ours by that much; `ours_vs_sigterm_grace` shows the stop does not wait for the
    SIGKILL. Every container made is labelled with a unit id of this run and removed at the end.
    """
    cli = _docker_cli()
    unit = f"bench-stop-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="aoscore-bench-stop-"))
    ours: list[float] = []
    peer: list[float] = []
    cli_start: list[float] = []
    runtime = DockerRuntime()
    try:
        runtime.ping()
        image_id = _load_plain_image(runtime, work / "blobs")
        for n in range(samples):
            for side in ("ours", "cli") if n % 2 else ("cli", "ours"):
                container_id = _running_container(runtime, image_id, unit, side, n)
                if side == "ours":
                    ours.append(_stop_ours(runtime, container_id))
                else:
                    peer.append(_stop_cli(cli, container_id))
                _check_exited(runtime, container_id, side)
                runtime.remove_container(container_id, timeout_s=1)
            # What the CLI costs before it talks to the engine: start, parse, print, exit.
            started = time.perf_counter()
            subprocess.run(
                [cli, "--version"], stdin=subprocess.DEVNULL, capture_output=True, check=True
            )
            cli_start.append(time.perf_counter() - started)
    finally:
        try:
            for info in runtime.list_containers({LABEL_UNIT: unit}):
                runtime.remove_container(info.id, timeout_s=1)
        finally:
            runtime.close()
            shutil.rmtree(work, ignore_errors=True)

    ours_ms = statistics.median(ours) * 1000
    cli_ms = statistics.median(peer) * 1000
    start_ms = statistics.median(cli_start) * 1000
    ratio = ours_ms / cli_ms
    grace = ours_ms / (STOP_GRACE_S * 1000)
    print(
        f"stop of a running container (exits 0 on SIGTERM; grace {STOP_GRACE_S} s): "
        f"DockerRuntime.stop_container against `{cli} stop -t {STOP_GRACE_S}`"
    )
    sides = (("ours", ours), ("docker stop CLI", peer), ("docker --version", cli_start))
    _print_sides(sides, width=16)
    print(
        f"ratio ours/CLI {ratio:.3f}: the CLI's time includes starting the docker process "
        f"(`docker --version` alone: {start_ms:.1f} ms median), ours runs in a warm client"
    )
    print(
        f"ours / {STOP_GRACE_S} s grace {grace:.4f}: the stop is prompt (SIGTERM, exit 0), "
        "not a wait for SIGKILL"
    )
    result = {
        "ours_ms": round(ours_ms, 4),
        "docker_cli_ms": round(cli_ms, 4),
        "ratio": round(ratio, 4),
        "ours_p90_ms": round(_quantile(ours, 0.9) * 1000, 4),
        "docker_cli_p90_ms": round(_quantile(peer, 0.9) * 1000, 4),
        "docker_cli_start_ms": round(start_ms, 4),
        "ours_vs_sigterm_grace": round(grace, 6),
        "grace_s": STOP_GRACE_S,
        "samples": samples,
        "docker_cli": cli,
    }
    _write_result(json_path, result)


# --- compose --------------------------------------------------------------------------------------

COMPOSE_GOAL_RATIO = 1.0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM or SIGHUP as Ctrl-C: the benchmark's cleanup runs either way."""
    raise KeyboardInterrupt(f"signal {signum}")


def _median_spans(spans: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per label, the median over runs (a label a run lacks counts 0 there), first-seen order."""
    labels = list(dict.fromkeys(label for one in spans for label in one))
    return {
        label: round(statistics.median(one.get(label, 0.0) for one in spans), 4) for label in labels
    }


def _spans_line(spans: dict[str, float]) -> str:
    return ", ".join(f"{label} {seconds:.3f}" for label, seconds in spans.items())


@bench.command()
@json_option
@click.option(
    "--runs",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Runs, each with new images; the median of each figure counts.",
)
def compose(json_path: Path, runs: int) -> None:
    """Start of 10 instances and a one-instance change: the agent against docker-compose."""
    # Imported here, not at the top, so that the other benchmarks run whatever moves here.
    import docker.errors
    from benchlib.compose import INSTANCES, BenchError, ComposeBench, RunResult, shielded
    from benchlib.peer_compose import ComposeError, cli_start_s, find_compose

    try:
        cli = find_compose()
    except ComposeError as exc:
        raise click.ClickException(str(exc)) from None
    handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    work = Path(tempfile.mkdtemp(prefix="aoscore-bench-compose-"))
    runtime = DockerRuntime()
    results: list[RunResult] = []
    notes: list[str] = []
    try:
        runtime.ping()
        cli_s = cli_start_s(cli)
        with Registry(work / "registry") as registry:
            cloud = CloudProcess(work / "cloud", registry.url).start()
            try:
                runner = ComposeBench(work, runtime, cloud, registry.url, cli)
                grace_s = runner.stop_grace_s
                for n in range(runs):
                    result = runner.run(n)
                    results.append(result)
                    notes += result.notes
                    print(
                        f"run {n + 1}/{runs}: start10 {result.start10.seconds:.3f} s against "
                        f"{result.compose_start10_s:.3f} s, change1 {result.change1.seconds:.3f} "
                        f"s against {result.compose_change1_s:.3f} s",
                        flush=True,
                    )
                notes += runner.notes
            finally:
                with shielded():
                    cloud.stop()
    except (BenchError, ComposeError, AosError, docker.errors.DockerException) as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    finally:
        with shielded():
            runtime.close()
            shutil.rmtree(work, ignore_errors=True)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    every = {
        "start10_s": [r.start10.seconds for r in results],
        "compose_start10_s": [r.compose_start10_s for r in results],
        "change1_s": [r.change1.seconds for r in results],
        "compose_change1_s": [r.compose_change1_s for r in results],
    }
    median = {key: statistics.median(values) for key, values in every.items()}
    ratios = {
        case: median[f"{case}_s"] / median[f"compose_{case}_s"] for case in ("start10", "change1")
    }
    print(
        f"{INSTANCES} instances (one per item), network none, restart no, stop grace "
        f"{grace_s:g} s on both sides; ours: desired status received -> the cloud told all "
        f"active; compose: `docker-compose up -d` from launch to exit; median of {runs}"
    )
    print(f"{'case':<8} {'ours s':>8} {'compose s':>10} {'ratio':>7}  goal  every run ours/compose")
    for case in ("start10", "change1"):
        verdict = "met" if ratios[case] <= COMPOSE_GOAL_RATIO else "missed"
        ours, peer = every[f"{case}_s"], every[f"compose_{case}_s"]
        pairs = " ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(ours, peer, strict=True))
        print(
            f"{case:<8} {median[f'{case}_s']:>8.3f} {median[f'compose_{case}_s']:>10.3f} "
            f"{ratios[case]:>7.3f}  {verdict:<5} {pairs}"
        )
    print(f"docker-compose alone starting and exiting (`version`): {cli_s:.3f} s of each figure")
    spans = {}
    for case in ("start10", "change1"):
        spans[f"{case}_phases_s"] = _median_spans([getattr(r, case).phases for r in results])
        spans[f"{case}_sm_s"] = _median_spans([getattr(r, case).sm for r in results])
        print(f"{case}, where our time goes (median s): {_spans_line(spans[f'{case}_phases_s'])}")
        print(f"  of which the SM, from launching on: {_spans_line(spans[f'{case}_sm_s'])}")
    for note in notes:
        print(f"note: {note}")
    result = {
        **{key: round(value, 4) for key, value in median.items()},
        "start10_ratio": round(ratios["start10"], 4),
        "change1_ratio": round(ratios["change1"], 4),
        "goal_ratio": COMPOSE_GOAL_RATIO,
        "instances": INSTANCES,
        "runs": runs,
        "stop_grace_s": grace_s,
        "compose_cli_start_s": round(cli_s, 4),
        **spans,
        "every_run": {key: [round(v, 4) for v in values] for key, values in every.items()},
        "notes": notes,
    }
    _write_result(json_path, result)


# --- placement ------------------------------------------------------------------------------------

PLACEMENT_NODES = 50
PLACEMENT_ITEMS = 500
PLACEMENT_PER_ITEM = 20
_GIB = 1 << 30


def _placement_problem(paused: str | None = None, grown: bool = False):
    """A unit of 50 nodes (labels, priorities, ratios, runtimes with own pools, shared
    resources), 500 items x 20 instances with item configs, image platforms: deterministic.

    `paused` names a node reported paused; `grown` adds one instance to the last item and a
    label to another, as a new desired status would.
    """
    from aoscore_py.cm.launcher.shapes import Platform
    from aoscore_py.nodes.itemconfig import ItemConfig, Quotas, RequestedResources, ResourceRequest
    from aoscore_py.protocol import (
        ArchInfo,
        CpuInfo,
        DesiredInstance,
        NodeConfig,
        NodeInfo,
        NodeState,
        OsInfo,
        ResourceInfo,
        ResourceRatios,
        RuntimeInfo,
        UnitConfig,
    )

    infos, configs_of_nodes = [], []
    for i in range(PLACEMENT_NODES):
        name = f"node-{i:02d}"
        runtimes = [RuntimeInfo(Identity(codename="docker"), "docker", max_instances=400)]
        if i % 4 == 0:
            runtimes.append(
                RuntimeInfo(
                    Identity(codename="crun"),
                    "crun",
                    allowed_dmips=40_000,
                    allowed_ram=4 * _GIB,
                )
            )
        resources = [ResourceInfo("camera", 4)] if i % 5 == 0 else []
        infos.append(
            NodeInfo(
                identity=Identity(codename=name),
                state=NodeState.PAUSED if name == paused else NodeState.PROVISIONED,
                is_connected=True,
                max_dmips=200_000 + 10_000 * (i % 7),
                total_ram=(24 + 4 * (i % 3)) * _GIB,
                os_info=OsInfo("linux"),
                cpus=(CpuInfo("cpu", arch_info=ArchInfo("x86_64")),),
                runtimes=tuple(runtimes),
                resources=tuple(resources),
            )
        )
        labels = tuple(label for label, every in (("gpu", 5), ("edge", 3)) if i % every == 0)
        ratios = ResourceRatios(cpu=60, ram=40) if i % 6 == 0 else None
        configs_of_nodes.append(
            NodeConfig(
                Identity(codename=name), resource_ratios=ratios, labels=labels, priority=i % 3
            )
        )
    groups, item_configs, platforms = [], {}, {}
    for i in range(PLACEMENT_ITEMS):
        item = f"item-{i:03d}"
        labels = ("gpu",) if i % 10 == 0 else ("edge",) if i % 5 == 1 else ()
        if grown and i == 7:
            labels = ("edge",)
        count = PLACEMENT_PER_ITEM + (1 if grown and i == PLACEMENT_ITEMS - 1 else 0)
        groups.append(
            DesiredInstance(Identity(id=item), Identity(id="fleet"), i % 4, count, labels)
        )
        item_configs[item] = ItemConfig(
            runtimes=("crun", "docker") if i % 8 == 0 else (),
            quotas=Quotas(cpu_dmips_limit=200 + 40 * (i % 16), ram_limit=(32 + 8 * (i % 12)) << 20),
            requested_resources=RequestedResources(cpu=300) if i % 3 == 0 else None,
            resources=(ResourceRequest("camera"),) if i % 50 == 3 else (),
        )
        platforms[item] = Platform("linux", "amd64")
    unit_config = UnitConfig("1.0.0", "7", tuple(configs_of_nodes))
    desired = DesiredStatus(unit_config=unit_config, instances=tuple(groups))
    return infos, desired, item_configs, platforms


def _place_once(previous, infos, desired, item_configs, platforms, current):
    """What one launching pass computes: the desired status compared, every instance placed."""
    from aoscore_py.cm.launcher.balancer import balance
    from aoscore_py.cm.launcher.shapes import demands, node_specs
    from aoscore_py.cm.updatemanager.compare import compare

    started = time.perf_counter()
    changes = compare(previous, desired)
    nodes = node_specs(infos, desired.unit_config)
    plans = balance(demands(desired, item_configs, platforms), nodes, current)
    return time.perf_counter() - started, changes, plans


@bench.command()
@json_option
@click.option(
    "--runs", type=click.IntRange(1, 200), default=15, show_default=True, help="Timed runs each."
)
def placement(json_path: Path, runs: int) -> None:
    """Compare a desired status, place 10,000 instances (500 items x 20) on 50 nodes."""
    import gc

    infos, desired, configs, platforms = _placement_problem()
    moved_infos, grown, _, _ = _placement_problem(paused="node-08", grown=True)
    first: list[float] = []
    again: list[float] = []
    for _ in range(runs):
        gc.collect()
        seconds, _, plans = _place_once(None, infos, desired, configs, platforms, {})
        first.append(seconds)
        current = {key: slot.node for plan in plans for key, slot in plan if slot.node}
        gc.collect()
        seconds, changes, replanned = _place_once(
            desired, moved_infos, grown, configs, platforms, current
        )
        again.append(seconds)
    slots = [slot for plan in plans for slot in plan.slots]
    placed = sum(1 for slot in slots if slot.node)
    after = {key: slot.node for plan in replanned for key, slot in plan}
    moved = sum(1 for key, node in current.items() if after.get(key) not in (None, node))
    result = {
        "seconds": round(max(statistics.median(first), statistics.median(again)), 4),
        "first_seconds": round(statistics.median(first), 4),
        "replan_seconds": round(statistics.median(again), 4),
        "first_runs": [round(s, 4) for s in first],
        "replan_runs": [round(s, 4) for s in again],
        "instances": len(slots),
        "placed": placed,
        "failed": len(slots) - placed,
        "replan_changes": len(changes.changes),
        "replan_moved": moved,
        "nodes": PLACEMENT_NODES,
        "goal_seconds": 0.1,
    }
    print(
        f"first placement {result['first_seconds'] * 1000:.1f} ms, "
        f"replan (node-08 paused, one item grown) {result['replan_seconds'] * 1000:.1f} ms; "
        f"{placed}/{len(slots)} placed, {moved} moved"
    )
    _write_result(json_path, result)


@bench.command()
@json_option
@click.option(
    "--instances",
    type=click.IntRange(1, 500),
    default=50,
    show_default=True,
    help="Instances on the one node.",
)
@click.option(
    "--settle",
    type=click.FloatRange(0),
    default=20.0,
    show_default=True,
    help="Seconds idle after convergence before measuring.",
)
def memory(json_path: Path, instances: int, settle: float) -> None:
    """Resident size (and Pss) of the CM and of its node's SM, idle with N instances."""
    from benchlib.memory import measure

    with tempfile.TemporaryDirectory(prefix="aoscore-bench-memory-") as work:
        result = measure(Path(work), instances, settle)
    print(
        f"{instances} instances, idle: CM {result['cm_rss_mib']} MiB resident "
        f"({result['cm_pss_mib']} Pss), SM {result['sm_rss_mib']} MiB "
        f"({result['sm_pss_mib']} Pss); goals CM 60, SM 40"
    )
    _write_result(json_path, result)


@bench.command()
@json_option
@click.option(
    "--statuses",
    type=click.IntRange(10, 100_000),
    default=300,
    show_default=True,
    help="Statuses per round.",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 100),
    default=6,
    show_default=True,
    help="Timed rounds per side, alternating (after one untimed round each).",
)
@click.option(
    "--dir",
    "base_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the two SQLite files live (default: a temporary folder); pick the disk the "
    "agent's data dir is on.",
)
def outbox(json_path: Path, statuses: int, rounds: int, base_dir: Path | None) -> None:
    """Statuses per second through the durable outbox (enqueue, send, ack, delete) against raw
    one-row SQLite commits (WAL, synchronous=FULL) in the same folder and run."""
    from benchlib.outbox import measure

    with (
        open(os.devnull, "w") as devnull,
        tempfile.TemporaryDirectory(prefix="aoscore-bench-outbox-", dir=base_dir) as work,
    ):
        configure_logs("warning", stream=devnull)
        raw = _RawCommit(Path(work) / "peer.db")
        try:
            result = asyncio.run(measure(Path(work), statuses, rounds, raw))
        finally:
            raw.close()
        print(f"outbox against a raw one-row commit (WAL, synchronous=FULL) in {work}")
    print(
        f"{result['statuses']} statuses: outbox {result['per_s']}/s, raw commits "
        f"{result['raw_per_s']}/s, ratio {result['ratio']} (goal <= {result['goal_ratio']})"
    )
    _write_result(json_path, result)


@bench.command()
@json_option
@click.option(
    "--storm",
    "storm_s",
    type=click.FloatRange(1, 3600),
    default=60.0,
    show_default=True,
    help="Seconds of hostile cloud.",
)
@click.option(
    "--settle",
    type=click.FloatRange(1, 600),
    default=10.0,
    show_default=True,
    help="Calm seconds before the baseline and after the storm.",
)
def storm(json_path: Path, storm_s: float, settle: float) -> None:
    """The agent's resident size calm, after a reconnect storm (a cloud that sends an
    oversized frame after each connect), and once calm again."""
    from benchlib.storm import measure

    with tempfile.TemporaryDirectory(prefix="aoscore-bench-storm-") as work:
        result = measure(Path(work), storm_s, settle)
    print(
        f"{result['reconnects']} reconnects in {storm_s:g} s: agent {result['baseline_rss_mb']} "
        f"MiB calm, {result['storm_end_rss_mb']} MiB at the storm's end, "
        f"{result['after_rss_mb']} MiB after (x{result['after_over_baseline']})"
    )
    _write_result(json_path, result)


@bench.command()
@json_option
@click.option(
    "--units",
    type=click.IntRange(1, 10_000),
    default=1000,
    show_default=True,
    help="Simulated units.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=4,
    show_default=True,
    help="Processes the units run in.",
)
def fleet(json_path: Path, units: int, workers: int) -> None:
    """N simulated units (real identity, discovery, TLS, link and outbox; no Docker) on one
    reference cloud: a desired status pushed to all, timed until each unit's full status naming
    it is in the cloud's timeline."""
    from benchlib.fleet import measure

    with tempfile.TemporaryDirectory(prefix="aoscore-bench-fleet-") as work:
        result = measure(
            Path(work),
            units,
            workers,
            lambda state, unit: state.timeline(unit),
        )
    print(
        f"{result['units']} units in {result['workers']} processes: p50 {result['p50_s']} s, "
        f"p99 {result['p99_s']} s, all {result['total_s']} s (goal <= {result['goal_total_s']}); "
        f"cloud {result['cloud_rss_mb']} MiB resident; set-up {result['setup_s']} s"
    )
    _write_result(json_path, result)


from benchlib.model import model  # noqa: E402 - declared in its own file
from benchlib.powercut import powercut  # noqa: E402 - declared in its own file

bench.add_command(model)
bench.add_command(powercut)

if __name__ == "__main__":
    bench()
