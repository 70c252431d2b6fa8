"""Benchmarks of aoscore-py, run through `scripts/bench NAME --json FILE`.

supersede: with the real agent, cloud, registry and Docker engine, the time from the
superseding desired status's arrival to the end of the old phase's task, in downloading,
launching and waitingActive (several runs each; the median is reported).

download: the image manager fetching, checking, verifying and committing a multi-layer item from
a loopback registry, against `skopeo copy` of the same image to an OCI folder in the same run
(interleaved, best of N each), plus what a kill -9 in the middle makes the agent fetch twice.

phase: one committed phase change (`DurableMachine.fire`) against a raw `sqlite3` one-row commit
(WAL, `synchronous=FULL`) in the same folder, interleaved, several hundred samples each; medians.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import click
import orjson

from aoscore_py.cloud.oci import OciImage, blob_url, build_test_image, push_image
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.state import CloudState
from aoscore_py.cm.imagemanager.blobstore import BlobStore, digest_hex
from aoscore_py.cm.imagemanager.download import blob_client
from aoscore_py.cm.imagemanager.manager import ImageManager, ImagePolicy
from aoscore_py.crypto.pki import Pki, init_pki
from aoscore_py.iam.tls import client_context
from aoscore_py.powercut.testbed import (
    CloudProcess,
    publish_test_set,
    refetch_after_kill,
    scenario,
    supersede_run,
)
from aoscore_py.protocol import (
    BlobUrlInfo,
    DesiredItem,
    DesiredStatus,
    Identity,
    ItemState,
)
from aoscore_py.sm.docker_runtime import DockerRuntime
from aoscore_py.storage import Storage

_MIB = 1 << 20
GOAL_RATIO = 1.1
DOWNLOAD_LAYERS = 4
DOWNLOAD_TAG = "latest"


@click.group()
def bench() -> None:
    """aoscore-py benchmarks."""


@bench.command()
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the results here.",
)
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
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {json_path}")


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
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the results here.",
)
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
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {json_path}")


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


@bench.command()
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the results here.",
)
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
    print(f"{'side':<12} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'max ms':>8}  samples")
    for name, values in (("move", move_s), ("raw commit", raw_s)):
        print(
            f"{name:<12} {statistics.median(values) * 1000:>10.3f} "
            f"{_quantile(values, 0.9) * 1000:>8.3f} {min(values) * 1000:>8.3f} "
            f"{max(values) * 1000:>8.3f}  {len(values)}"
        )
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
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"wrote {json_path}")


if __name__ == "__main__":
    bench()
