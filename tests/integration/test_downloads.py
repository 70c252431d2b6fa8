"""Downloads on a bad link, signatures and the store, with the real registry, cloud and agent.

Blob URLs point at a loopback proxy in front of the real registry; each test tells the proxy
which fault to inject (drop after N bytes, 5xx, altered bytes, too many bytes, a 206 for another
range, a 416, stall) and checks what the agent does about it: resume with Range, start over,
retry, refuse with an errorInfo, keep the running version.

Behaviour only: a resumed transfer asks for the rest, never again from byte 0. How many bytes a
kill -9 makes the agent fetch twice is a figure, reported by `scripts/bench download`
(refetch_fraction), not asserted here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from aoscore_py.blobs import oci
from aoscore_py.blobs.store import BlobStore
from aoscore_py.cloud.oci import OciImage, host_architecture
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.service import publish
from aoscore_py.cm.imagemanager.manager import ImageManager
from aoscore_py.nodes.itemconfig import ItemConfig, ItemFacts, Quotas, RequestedResources
from aoscore_py.powercut.faultproxy import Fault, FaultProxy, Request
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    aoscore_cmd,
    operate,
    push,
    read_store,
    refetch_after_kill,
    scenario,
    wait_converged,
    wait_item_state,
)
from aoscore_py.protocol import DesiredStatus
from aoscore_py.sm.docker_runtime import LABEL_ITEM, LABEL_UNIT, LABEL_VERSION, DockerRuntime

from .conftest import Agents

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.url) as running:
        yield running


@pytest.fixture(scope="module")
def pcloud(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, proxy: FaultProxy
) -> Iterator[CloudProcess]:
    """A reference cloud whose blob URLs go through the proxy."""
    running = CloudProcess(
        tmp_path_factory.mktemp("pcloud"), registry.url, extra=("--base", proxy.url)
    ).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def big(pcloud: CloudProcess, registry: Registry) -> OciImage:
    """An item with a 3 MiB layer (a transfer long enough to be cut in the middle)."""
    return publish(pcloud.cloud_dir, "dl-big", registry_url=registry.url, extra_layer_bytes=3 << 20)


@pytest.fixture(scope="module")
def small(pcloud: CloudProcess, registry: Registry) -> OciImage:
    return publish(pcloud.cloud_dir, "dl-small", registry_url=registry.url)


@pytest.fixture
def serving(pcloud: CloudProcess, proxy: FaultProxy) -> Iterator[Callable[..., dict]]:
    """Change how the cloud serves blobs for one test; faults and settings are undone after."""

    def change(**settings: object) -> dict:
        answer = operate(pcloud, {"op": "blobs", "base": proxy.url, **settings})
        assert answer["ok"], answer
        return answer

    proxy.clear()
    proxy.reset_counters()
    yield change
    proxy.clear()
    operate(pcloud, {"op": "blobs", "base": proxy.url})


@pytest.fixture
def pagents(pcloud: CloudProcess, tmp_path: Path) -> Iterator[Agents]:
    running = Agents(pcloud, tmp_path)
    yield running
    running.stop_all()


def big_layer(image: OciImage) -> str:
    return max(image.layer_digests, key=lambda d: len(image.blobs[d]))


def layer_requests(proxy: FaultProxy, digest: str) -> list[Request]:
    return [r for r in proxy.requests() if digest in r.path]


def range_start(request: Request) -> int:
    """N of the `Range: bytes=N-` the agent sent."""
    assert request.range is not None and request.range.startswith("bytes="), request
    return int(request.range.removeprefix("bytes=").rstrip("-"))


def running_versions(runtime: DockerRuntime, unit: str) -> set[tuple[str, str]]:
    return {
        (c.labels[LABEL_ITEM], c.labels[LABEL_VERSION])
        for c in runtime.list_containers({LABEL_UNIT: unit})
        if c.status == "running"
    }


def item_error(data_dir: Path, item_id: str, version: str) -> tuple[int, str]:
    with read_store(data_dir) as storage:
        record = storage.item(item_id, version)
    assert record is not None and record.error is not None, record
    return record.error.aos_code, record.error.message


def converge(
    pagents: Agents, unit: str, ds: DesiredStatus, runtime: DockerRuntime, *extra: str
) -> tuple[AgentLog, Path]:
    _proc, log, data_dir = pagents.start(unit, extra=extra)
    log.wait_for("link.up")
    assert push(pagents.cloud, unit, ds)["ok"]
    result = wait_converged(unit, ds, pagents.cloud, data_dir, runtime)
    assert result.ok, result.problems
    return log, data_dir


def then_fail(
    pagents: Agents, unit: str, data_dir: Path, ds: DesiredStatus, item_id: str
) -> tuple[int, str]:
    """Push `ds`, whose `item_id` must fail to download; its (aosCode, message)."""
    assert push(pagents.cloud, unit, ds)["ok"]
    version = next(i.version for i in ds.items if i.item.key == item_id)
    wait_item_state(data_dir, item_id, version, ("failed",))
    return item_error(data_dir, item_id, version)


# --- a bad link ------------------------------------------------------------------------------


def test_dropped_connections_resume_with_range(
    pagents: Agents, unit: str, big: OciImage, proxy: FaultProxy, serving, docker_runtime
) -> None:
    layer = big_layer(big)
    size = len(big.blobs[layer])
    proxy.add(Fault("drop", path_contains=layer, after_bytes=1 << 20, times=2))
    converge(pagents, unit, scenario([("svc-big", big)], num_instances=1), docker_runtime)
    asked = layer_requests(proxy, layer)
    assert [r.fault for r in asked] == ["drop", "drop", None]
    assert asked[0].range is None and asked[1].range and asked[2].range, "resumed with Range"
    starts = [range_start(r) for r in asked[1:]]
    assert 0 < starts[0] < starts[1] < size, "each attempt went on further, never from byte 0"
    assert asked[2].body_bytes == size - starts[1], "the last answer carried the rest"


def test_a_206_for_another_range_starts_the_blob_over_from_byte_0(
    pagents: Agents, unit: str, big: OciImage, proxy: FaultProxy, serving, docker_runtime
) -> None:
    layer = big_layer(big)
    size = len(big.blobs[layer])
    proxy.add(Fault("drop", path_contains=layer, after_bytes=1 << 20))
    proxy.add(Fault("wrong_range", path_contains=layer, after_bytes=0))
    log, _ = converge(pagents, unit, scenario([("svc-big", big)], num_instances=1), docker_runtime)
    asked = layer_requests(proxy, layer)
    assert [(r.fault, r.status) for r in asked] == [
        ("drop", 200),
        ("wrong_range", 206),
        (None, 200),
    ]
    assert asked[1].range is not None and range_start(asked[1]) > 0, "it asked for the rest"
    assert asked[2].range is None and asked[2].body_bytes == size, "then the whole blob, from 0"
    errors = [r["error"] for r in log.find("blob.url_failed", digest=layer)]
    assert f"HTTP 206 for another range than {asked[1].range}" in errors, errors


def test_a_416_for_a_resumed_range_starts_the_blob_over_from_byte_0(
    pagents: Agents, unit: str, big: OciImage, proxy: FaultProxy, serving, docker_runtime
) -> None:
    layer = big_layer(big)
    size = len(big.blobs[layer])
    proxy.add(Fault("drop", path_contains=layer, after_bytes=1 << 20))
    proxy.add(Fault("unsatisfiable", path_contains=layer))
    log, _ = converge(pagents, unit, scenario([("svc-big", big)], num_instances=1), docker_runtime)
    asked = layer_requests(proxy, layer)
    assert [(r.fault, r.status) for r in asked] == [
        ("drop", 200),
        ("unsatisfiable", 416),
        (None, 200),
    ]
    assert asked[1].range is not None and range_start(asked[1]) > 0, "it asked for the rest"
    assert asked[2].range is None and asked[2].body_bytes == size, "then the whole blob, from 0"
    errors = [r["error"] for r in log.find("blob.url_failed", digest=layer)]
    assert f"HTTP 416 for {asked[1].range}; starting over" in errors, errors


def test_5xx_answers_are_retried(
    pagents: Agents, unit: str, small: OciImage, proxy: FaultProxy, serving, docker_runtime
) -> None:
    proxy.add(Fault("status", path_contains=small.config_digest, status=503, times=3))
    log, _ = converge(pagents, unit, scenario([("svc-small", small)]), docker_runtime)
    statuses = [r.status for r in proxy.requests() if small.config_digest in r.path]
    assert statuses == [503, 503, 503, 200]
    assert log.find("blob.retry_scheduled", digest=small.config_digest)


def test_a_stalled_transfer_is_cut_by_the_timeout_and_resumed(
    pagents: Agents, unit: str, big: OciImage, proxy: FaultProxy, serving, docker_runtime
) -> None:
    layer = big_layer(big)
    proxy.add(Fault("stall", path_contains=layer, after_bytes=500_000, stall_s=60))
    ds = scenario([("svc-big", big)], num_instances=1)
    log, _ = converge(pagents, unit, ds, docker_runtime, "--download-timeout", "1")
    assert log.find("blob.url_failed", digest=layer)
    resumed = [r.range for r in proxy.requests() if layer in r.path][1]
    assert resumed is not None and int(resumed[6:-1]) >= 500_000 - (256 << 10)


def test_a_dead_first_url_falls_through_to_the_next(
    pagents: Agents, unit: str, small: OciImage, serving, docker_runtime
) -> None:
    serving(deadFirst=True)
    log, _ = converge(pagents, unit, scenario([("svc-small", small)]), docker_runtime)
    failed = log.find("blob.url_failed")
    assert failed and all("127.0.0.1:1/" in str(r["url"]) for r in failed)


def test_cancelling_stops_the_transfer_and_keeps_the_partial_file(
    pagents: Agents,
    unit: str,
    big: OciImage,
    small: OciImage,
    proxy: FaultProxy,
    serving,
    docker_runtime,
) -> None:
    layer = big_layer(big)
    proxy.add(Fault("stall", path_contains=layer, after_bytes=1 << 20, stall_s=60))
    _proc, log, data_dir = pagents.start(unit)
    log.wait_for("link.up")
    assert push(pagents.cloud, unit, scenario([("svc-big", big)], num_instances=1))["ok"]
    assert proxy.wait_stalled(30)
    second = scenario([("svc-small", small)])
    assert push(pagents.cloud, unit, second)["ok"]
    superseded = log.wait_for("cycle.superseded")
    assert superseded["phase"] == "downloading"
    result = wait_converged(unit, second, pagents.cloud, data_dir, docker_runtime)
    assert result.ok, result.problems
    partial = data_dir / "partial" / layer.split(":")[1]
    assert partial.stat().st_size >= (1 << 20) - (256 << 10), "the bytes received are kept"
    proxy.release()


def test_kill_9_mid_item_resumes_instead_of_starting_over(
    registry: Registry, docker_runtime: DockerRuntime, tmp_path: Path
) -> None:
    run = refetch_after_kill(tmp_path, registry.url, docker_runtime)
    assert 0.3 < run.served_before_kill / run.item_bytes < 0.95, "killed in the middle"
    after_restart = run.served_total - run.served_before_kill
    # Starting over would fetch the whole item again; resuming fetches what was missing.
    assert after_restart < run.item_bytes, run


# --- refused items keep the running version ---------------------------------------------------


def test_altered_bytes_fail_the_item_and_the_old_version_runs_on(
    pagents: Agents,
    unit: str,
    small: OciImage,
    big: OciImage,
    proxy: FaultProxy,
    serving,
    docker_runtime,
) -> None:
    _log, data_dir = converge(pagents, unit, scenario([("svc", small)]), docker_runtime)
    proxy.add(Fault("corrupt", path_contains=big_layer(big), after_bytes=1000, times=-1))
    code, message = then_fail(
        pagents, unit, data_dir, scenario([("svc", big)], version="2.0.0"), "svc"
    )
    assert code == 10 and "digest" in message, message
    assert running_versions(docker_runtime, unit) == {("svc", "1.0.0")}


def test_a_body_larger_than_announced_fails_the_item_and_the_old_version_runs_on(
    pagents: Agents,
    unit: str,
    small: OciImage,
    big: OciImage,
    proxy: FaultProxy,
    serving,
    docker_runtime,
) -> None:
    _log, data_dir = converge(pagents, unit, scenario([("svc", small)]), docker_runtime)
    layer = big_layer(big)
    proxy.add(Fault("oversize", path_contains=layer, extra_bytes=1 << 20, times=-1))
    code, message = then_fail(
        pagents, unit, data_dir, scenario([("svc", big)], version="2.0.0"), "svc"
    )
    # invalidChecksum (10): the bytes are not the blob's, so the item is not fetched again for
    # this desired status; refused as too many bytes, before any hashing
    assert code == 10, message
    assert f"sent more than the {len(big.blobs[layer])} bytes announced" in message, message
    asked = layer_requests(proxy, layer)
    assert asked and {r.fault for r in asked} == {"oversize"}
    partial = data_dir / "partial" / layer.split(":")[1]
    kept = partial.stat().st_size if partial.exists() else 0
    assert kept == 0, "bytes of a body that was too long are not kept for resuming"
    assert running_versions(docker_runtime, unit) == {("svc", "1.0.0")}


@pytest.mark.parametrize(
    ("signing", "expected"),
    [("unsigned", "no signature"), ("wrong", "does not verify")],
)
def test_bad_signatures_fail_the_item_and_the_old_version_runs_on(
    pagents: Agents,
    unit: str,
    small: OciImage,
    big: OciImage,
    serving,
    docker_runtime,
    signing: str,
    expected: str,
) -> None:
    _log, data_dir = converge(pagents, unit, scenario([("svc", small)]), docker_runtime)
    serving(signing=signing)
    code, message = then_fail(
        pagents, unit, data_dir, scenario([("svc", big)], version="2.0.0"), "svc"
    )
    assert expected in message, message
    assert code != 0
    assert running_versions(docker_runtime, unit) == {("svc", "1.0.0")}


def test_unsigned_blobs_are_accepted_when_the_unit_allows_them(
    pagents: Agents, unit: str, small: OciImage, serving, docker_runtime
) -> None:
    serving(signing="unsigned")
    converge(pagents, unit, scenario([("svc", small)]), docker_runtime, "--allow-unsigned")


def test_rsa_pss_sha512_signatures_verify(
    pagents: Agents, unit: str, small: OciImage, serving, docker_runtime, tmp_path: Path
) -> None:
    """Blobs signed by an RSA PKI with PSS/SHA-512 (the cloud keeps those hashes of every blob
    it publishes) pass, with the unit trusting that PKI's root."""
    from aoscore_py.crypto.pki import init_pki

    cloud_dir = tmp_path / "rsa-cloud"
    init_pki(cloud_dir / "pki", "rsa")
    rsa_cloud = CloudProcess(cloud_dir, pagents.cloud.registry_url).start()
    try:
        answer = operate(rsa_cloud, {"op": "blobs", "alg": "RSA/SHA512/PSS"})
        assert answer["ok"], answer
        publish(cloud_dir, "dl-small", registry_url=pagents.cloud.registry_url)
        agents = Agents(rsa_cloud, tmp_path)
        try:
            converge(agents, unit, scenario([("svc", small)]), docker_runtime)
        finally:
            agents.stop_all()
    finally:
        rsa_cloud.stop()


# --- space ------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB file system of its own for the agent's data."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def start_on(pagents: Agents, unit: str, data_dir: Path) -> AgentLog:
    from aoscore_py.powercut.testbed import start_agent

    log = AgentLog(pagents.root / f"agent-{uuid.uuid4().hex[:4]}.log")
    proc = start_agent(unit, pagents.cloud.ws_url, data_dir, log.path, ca=pagents.cloud.trusted_ca)
    pagents.started.append(proc)
    log.wait_for("link.up")
    return log


def test_an_item_larger_than_the_free_space_is_refused_before_download(
    pagents: Agents,
    unit: str,
    small: OciImage,
    registry: Registry,
    small_disk: Path,
    proxy: FaultProxy,
    serving,
    docker_runtime,
) -> None:
    huge = publish(
        pagents.cloud.cloud_dir, "dl-huge", registry_url=registry.url, extra_layer_bytes=64 << 20
    )
    data_dir = small_disk / "data"
    start_on(pagents, unit, data_dir)
    first = scenario([("svc", small)])
    assert push(pagents.cloud, unit, first)["ok"]
    assert wait_converged(unit, first, pagents.cloud, data_dir, docker_runtime).ok
    code, message = then_fail(
        pagents, unit, data_dir, scenario([("svc", huge)], version="2.0.0"), "svc"
    )
    assert code == 3 and "not enough space" in message, message
    assert proxy.bytes_sent(big_layer(huge)) == 0, "nothing was fetched"
    assert running_versions(docker_runtime, unit) == {("svc", "1.0.0")}
    pagents.stop_all()


def test_running_out_of_space_mid_download_fails_the_item_and_frees_its_partials(
    pagents: Agents,
    unit: str,
    small: OciImage,
    big: OciImage,
    small_disk: Path,
    proxy: FaultProxy,
    serving,
    docker_runtime,
) -> None:
    data_dir = small_disk / "data"
    log = start_on(pagents, unit, data_dir)
    first = scenario([("svc", small)])
    assert push(pagents.cloud, unit, first)["ok"]
    assert wait_converged(unit, first, pagents.cloud, data_dir, docker_runtime).ok
    layer = big_layer(big)
    proxy.add(Fault("stall", path_contains=layer, after_bytes=1 << 20, stall_s=60))
    second = scenario([("svc", big)], version="2.0.0")
    assert push(pagents.cloud, unit, second)["ok"]
    assert proxy.wait_stalled(30)
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # another program fills the disk under the download
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    proxy.release()
    wait_item_state(data_dir, "svc", "2.0.0", ("failed",))
    code, message = item_error(data_dir, "svc", "2.0.0")
    assert code == 3 and "no space left" in message, message
    assert not (data_dir / "partial" / layer.split(":")[1]).exists()
    assert running_versions(docker_runtime, unit) == {("svc", "1.0.0")}
    filler.unlink()
    result = wait_converged(unit, second, pagents.cloud, data_dir, docker_runtime, 60)
    assert result.ok, result.problems
    assert log.find("cycle.retry_scheduled")
    pagents.stop_all()


# --- the store -------------------------------------------------------------------------------


def blob_files(data_dir: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (data_dir / "blobs" / "sha256").iterdir()}


def test_removed_versions_and_their_own_blobs_are_collected_after_the_ttl(
    pagents: Agents, unit: str, small: OciImage, big: OciImage, serving, docker_runtime
) -> None:
    log, data_dir = converge(
        pagents, unit, scenario([("svc", small)]), docker_runtime, "--removed-ttl", "0"
    )
    second = scenario([("svc", big)], version="2.0.0")
    assert push(pagents.cloud, unit, second)["ok"]
    assert wait_converged(unit, second, pagents.cloud, data_dir, docker_runtime).ok
    log.wait_for("item.collected", item="svc", version="1.0.0")
    with read_store(data_dir) as storage:
        assert [(r.version, r.state.value) for r in storage.items()] == [("2.0.0", "installed")]
    stored = blob_files(data_dir)
    assert set(big.blobs) <= stored
    assert not (set(small.blobs) - set(big.blobs)) & stored, "only shared blobs are kept"
    assert set(small.layer_digests) & set(big.layer_digests) <= stored


def test_a_changed_blob_is_caught_by_its_record_and_fetched_again(
    pagents: Agents, unit: str, small: OciImage, proxy: FaultProxy, serving, docker_runtime
) -> None:
    ds = scenario([("svc", small)])
    log, data_dir = converge(pagents, unit, ds, docker_runtime)
    config = data_dir / "blobs" / "sha256" / small.config_digest.split(":")[1]
    config.write_bytes(config.read_bytes()[:-1])  # truncated
    proxy.reset_counters()
    changed = scenario([("svc", small)], num_instances=1)
    assert push(pagents.cloud, unit, changed)["ok"]
    log.wait_for("blob.changed", digest=small.config_digest)
    assert wait_converged(unit, changed, pagents.cloud, data_dir, docker_runtime).ok
    fetched = {r.path.rsplit("/", 1)[1] for r in proxy.requests()}
    assert fetched == {small.config_digest}, "only the changed blob, the rest by their records"


def test_images_verify_rehashes_everything_and_drops_corrupt_blobs(
    pagents: Agents, unit: str, small: OciImage, serving, docker_runtime
) -> None:
    _log, data_dir = converge(pagents, unit, scenario([("svc", small)]), docker_runtime)
    pagents.stop_all()
    layer = data_dir / "blobs" / "sha256" / small.layer_digests[0].split(":")[1]
    stat = layer.stat()
    raw = bytearray(layer.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    layer.write_bytes(bytes(raw))
    os.utime(layer, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # size and mtime as recorded
    cmd = aoscore_cmd("images", "verify", "--data-dir", str(data_dir))
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert first.returncode == 1, first.stdout + first.stderr
    assert f"{small.layer_digests[0]}" in first.stdout and "corrupt" in first.stdout
    assert not layer.exists()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stdout
    status = subprocess.run(
        aoscore_cmd("images", "status", "--json", "--data-dir", str(data_dir)),
        capture_output=True,
        timeout=60,
    )
    assert status.returncode == 0
    body = orjson.loads(status.stdout)
    assert body["items"] == [{"id": "svc", "version": "1.0.0", "state": "installed", "error": None}]


def test_progress_is_visible_to_the_cli_while_downloading(
    pagents: Agents, unit: str, big: OciImage, proxy: FaultProxy, serving, docker_runtime
) -> None:
    layer = big_layer(big)
    proxy.add(Fault("stall", path_contains=layer, after_bytes=1 << 20, stall_s=60))
    _proc, log, data_dir = pagents.start(unit)
    log.wait_for("link.up")
    assert push(pagents.cloud, unit, scenario([("svc-big", big)], num_instances=1))["ok"]
    assert proxy.wait_stalled(30)
    record = log.wait_for("download.progress", timeout_s=10)
    assert record["total"] >= len(big.blobs[layer])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = subprocess.run(
            aoscore_cmd("images", "status", "--json", "--data-dir", str(data_dir)),
            capture_output=True,
            timeout=60,
        )
        transfers = orjson.loads(out.stdout)["transfers"]
        if transfers:
            break
        time.sleep(0.2)
    assert [t["digest"] for t in transfers] == [layer]
    assert transfers[0]["present"] > 0 and transfers[0]["size"] == len(big.blobs[layer])
    proxy.release()
    pagents.started[-1].signal(signal.SIGTERM)


# --- the item config -------------------------------------------------------------------------


def test_an_item_config_published_by_the_cli_is_fetched_signed_and_read_back(
    pagents: Agents,
    unit: str,
    registry: Registry,
    proxy: FaultProxy,
    serving,
    docker_runtime,
) -> None:
    """`cloud publish` with item config options, the agent's image manager fetching the
    aosItemConfig blob through the registry (signed, recorded), and `item_facts` reading the
    quotas, requests, runtimes and the image platform back from the agent's store."""
    published = subprocess.run(
        aoscore_cmd(
            "cloud",
            "publish",
            "dl-limited",
            *("--cloud-dir", str(pagents.cloud.cloud_dir), "--registry", registry.url),
            *("--cpu-limit", "4000", "--ram-limit", "256MiB", "--pids-limit", "128"),
            *("--requested-cpu", "500", "--requested-ram", "64MiB", "--runtime", "docker"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert published.returncode == 0, published.stderr
    index_digest = published.stdout.strip()
    _proc, log, data_dir = pagents.start(unit)
    log.wait_for("link.up")
    image = OciImage("dl-limited", index_digest, {})
    assert push(pagents.cloud, unit, scenario([("limited", image)], num_instances=1))["ok"]
    wait_item_state(data_dir, "limited", "1.0.0", ("pending", "installed"))

    with read_store(data_dir) as storage:
        # item_facts reads the store only: no cloud and no HTTP client behind this manager
        offline: Any = None
        images = ImageManager(storage, BlobStore(data_dir), source=offline, http=offline)
        facts = images.item_facts("limited", "1.0.0")
        item_config = oci.item_config_digest(images.layout("limited", "1.0.0").manifest)
        assert item_config is not None and storage.blob(item_config) is not None
    assert facts == ItemFacts(
        ItemConfig(
            runtimes=("docker",),
            quotas=Quotas(cpu_dmips_limit=4000, ram_limit=256 << 20, pids_limit=128),
            requested_resources=RequestedResources(cpu=500, ram=64 << 20),
        ),
        "linux",
        host_architecture(),
        None,
    )
    stored = log.wait_for("blob.stored", digest=item_config)
    assert stored["signed"] is True
    assert any(item_config in r.path for r in proxy.requests()), "fetched from the registry"
