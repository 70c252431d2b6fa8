"""`aoscore sm` as a real child process against the CM's side of the SM link in the test process
(a `NodeManager` behind a real `SMServer`, and a real `BlobServer` over a store holding a test
image), on the real Docker engine: registration, instances run and reported, and what survives
an SM killed with SIGKILL or a CM that goes away; an item config's quotas on the container;
node configs checked and set. Plaintext on loopback, and mutual TLS with the unit PKI.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import orjson
import pytest

from aoscore_py.blobs.store import BlobStore
from aoscore_py.cloud.oci import OciImage, build_test_image
from aoscore_py.cm.imagemanager.blobserver import BlobServer
from aoscore_py.cm.launcher.nodemanager import NodeManager
from aoscore_py.cm.launcher.smserver import SMServer
from aoscore_py.errors import AosCode, AosError
from aoscore_py.iam.tls import TlsFiles, grpc_server_credentials
from aoscore_py.iam.unitpki import UnitPki, init_unit_pki
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, wire
from aoscore_py.nodes.proto import sm_pb2
from aoscore_py.powercut.testbed import Process, aoscore_cmd
from aoscore_py.protocol import InstanceState, UnitConfigState, UnitConfigStatus
from aoscore_py.sm.docker_runtime import LABEL_NODE, LABEL_UNIT, DockerRuntime
from aoscore_py.sm.types import ContainerInfo

pytestmark = pytest.mark.integration

NODE = "node-a"
IMAGE = build_test_image("sm-process")
CRASHING = build_test_image("sm-process-crash", command=["sh", "-c", "echo bye; exit 3"])
QUOTAS = {"ramLimit": 80 << 20, "pidsLimit": 24, "cpuDmipsLimit": 250}
LIMITED = build_test_image("sm-process-limited", item_config={"quotas": QUOTAS})
UNREADABLE = build_test_image("sm-process-unreadable", item_config={"quotas": {"ramLimit": -1}})
MISSING = "sha256:" + "e" * 64  # a manifest the CM does not hold


def layout(image: OciImage) -> ImageLayout:
    return ImageLayout(
        image.index_digest,
        image.manifest_digest,
        image.manifest,
        image.config_digest,
        tuple(image.layer_digests),
    )


def spec(item: str, image: OciImage | None = IMAGE, version: str = "1.0") -> InstanceSpec:
    if image is None:
        shape = ImageLayout(MISSING, MISSING, {}, "sha256:" + "d" * 64, ())
    else:
        shape = layout(image)
    return InstanceSpec(InstanceKey(item, "subject", 0), "service", version, shape)


async def until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not condition():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g} s: {what or condition}") from None


class Cm:
    """The CM's side in the test process: a store with the test images, its blob server, and a
    node manager behind an SM server, which the test may stop and start again on its port."""

    def __init__(self, root: Path, pki: UnitPki | None = None) -> None:
        self.store = BlobStore(root / "cm")
        for image in (IMAGE, CRASHING, LIMITED, UNREADABLE):
            for data in image.blobs.values():
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                if self.store.stat(digest) is None:
                    self.store.partial_path(digest).write_bytes(data)
                    self.store.commit(digest)
        self.pki = pki
        tls = pki.cm if pki is not None else None
        self.blobs = BlobServer(self.store, "127.0.0.1", tls=tls, insecure=pki is None)
        self.changed: list[str] = []  # a node id per NodeInstancesStatus received
        self.nodes = NodeManager([NODE], answer_timeout_s=60.0, on_node_changed=self.changed.append)
        self.server: SMServer | None = None
        self.port = 0

    def blob_urls(self, digests: list[str]) -> list[str]:
        for digest in digests:
            if self.store.stat(digest) is None:
                raise AosError(f"blob {digest} is not in the store", code=AosCode.NOT_FOUND)
        return [self.blobs.url_for(d) for d in digests]

    async def start(self) -> None:
        if not self.blobs.port:
            await self.blobs.start()
        if self.pki is None:
            server = SMServer(self.nodes, self.blob_urls, f"127.0.0.1:{self.port}", insecure=True)
        else:
            files = self.pki.cm
            credentials = grpc_server_credentials(files.ca, files.cert, files.key)
            server = SMServer(
                self.nodes, self.blob_urls, f"127.0.0.1:{self.port}", credentials=credentials
            )
        await server.start()
        self.server, self.port = server, server.port

    async def stop_link(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def restart_link(self) -> None:
        """A new CM on the same port: a new node manager that knows nothing yet."""
        await self.stop_link()
        self.changed = []
        self.nodes = NodeManager([NODE], answer_timeout_s=60.0, on_node_changed=self.changed.append)
        await self.start()

    async def close(self) -> None:
        await self.stop_link()
        await self.blobs.stop()

    @property
    def node(self):  # the RemoteNode of the SM under test
        return self.nodes[NODE]

    def reported(self) -> dict[InstanceKey, InstanceState]:
        return {k: s.state for k, s in self.node._statuses.items()}


class Sms:
    """Starts `aoscore sm` processes for a test and stops every one of them afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Process] = []

    def start(
        self,
        cm: Cm,
        unit: str,
        node_files: TlsFiles | None = None,
        *,
        node_id: str = NODE,
        data_dir: str = "sm-data",
        extra: tuple[str, ...] = (),
    ) -> Process:
        args = aoscore_cmd(
            "sm",
            "--node-id",
            node_id,
            "--cm",
            f"127.0.0.1:{cm.port}",
            "--data-dir",
            str(self.root / data_dir),
            "--system-id",
            unit,
            "--log-format",
            "json",
            *extra,
        )
        if node_files is None:
            args.append("--insecure")
        else:
            args += ["--ca", str(node_files.ca), "--cert", str(node_files.cert)]
            args += ["--key", str(node_files.key)]
        cm.changed.clear()
        proc = Process(args, self.root / f"sm-{len(self.started)}.log")
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.proc.returncode is None:
                proc.stop()


@pytest.fixture
async def cm(tmp_path: Path) -> AsyncIterator[Cm]:
    running = Cm(tmp_path)
    await running.start()
    yield running
    await running.close()


@pytest.fixture
def sms(tmp_path: Path) -> Iterator[Sms]:
    running = Sms(tmp_path)
    yield running
    running.stop_all()


def containers(runtime: DockerRuntime, unit: str) -> list[ContainerInfo]:
    return runtime.list_containers({LABEL_UNIT: unit, LABEL_NODE: NODE})


async def registered(cm: Cm, proc: Process, timeout_s: float = 30.0) -> None:
    """Wait until the SM registered and its first NodeInstancesStatus arrived."""

    def up() -> bool:
        assert proc.proc.poll() is None, f"the SM exited:\n{proc.output()[-3000:]}"
        return cm.node.connected and NODE in cm.changed

    await until(up, timeout_s, "the SM registered")


async def logged(proc: Process, text: str, timeout_s: float = 30.0) -> None:
    await until(lambda: text in proc.output(), timeout_s, f"{text!r} in {proc.log_path}")


async def reported_state(cm: Cm, key: InstanceKey, state: InstanceState, t: float = 30.0) -> None:
    await until(lambda: cm.reported().get(key) == state, t, f"{key} reported {state}")


async def test_an_sm_process_runs_reports_and_outlives_its_cm_and_itself(
    cm: Cm, sms: Sms, unit: str, docker_runtime: DockerRuntime
) -> None:
    first = sms.start(cm, unit)
    await registered(cm, first)
    info = await cm.node.node_info()
    [runtime] = info.runtimes or ()
    assert (runtime.identity.key, runtime.runtime_type) == ("docker", "docker")
    assert runtime.arch_info is not None and runtime.os_info is not None
    assert runtime.os_info.os == "linux" and runtime.total_ram
    assert await cm.node.instance_statuses() == []

    wanted = spec("svc")
    [answer] = await cm.node.run_instances([wanted])
    assert answer.key == wanted.key and answer.version == "1.0"
    assert answer.state in (InstanceState.ACTIVATING, InstanceState.ACTIVE), answer
    [box] = containers(docker_runtime, unit)
    assert box.status == "running"
    await reported_state(cm, wanted.key, InstanceState.ACTIVE)
    assert not cm.node.needs_update([wanted])

    # SIGKILL: the container keeps running, and a restarted SM reports it without a new one.
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    await until(lambda: not cm.node.connected, 30, "the CM saw the SM go")
    assert [c.id for c in containers(docker_runtime, unit)] == [box.id]
    second = sms.start(cm, unit)
    await registered(cm, second)
    await reported_state(cm, wanted.key, InstanceState.ACTIVE)
    assert not cm.node.needs_update([wanted])
    await cm.node.run_instances([wanted])  # the same again: nothing changes
    assert [(c.id, c.status) for c in containers(docker_runtime, unit)] == [(box.id, "running")]

    # The CM goes away: the container keeps running; the SM comes back to a new CM on the port.
    await cm.stop_link()
    await asyncio.sleep(1.5)
    assert [(c.id, c.status) for c in containers(docker_runtime, unit)] == [(box.id, "running")]
    await cm.restart_link()
    await registered(cm, second, timeout_s=40)
    await reported_state(cm, wanted.key, InstanceState.ACTIVE)
    assert not cm.node.needs_update([wanted])
    assert [(c.id, c.status) for c in containers(docker_runtime, unit)] == [(box.id, "running")]

    # A clean stop: exit 0, the container keeps running.
    assert second.stop() == 0
    assert [(c.id, c.status) for c in containers(docker_runtime, unit)] == [(box.id, "running")]
    log = second.output()
    assert '"event":"sm.stopped"' in log and '"event":"link.up"' in log


async def test_an_image_the_cm_lacks_fails_its_instance_only_and_crashes_are_alerted(
    cm: Cm, sms: Sms, unit: str, docker_runtime: DockerRuntime
) -> None:
    proc = sms.start(cm, unit)
    await registered(cm, proc)
    good, lost, crashing = spec("good"), spec("lost", None), spec("crashing", CRASHING)
    answer = {s.key: s for s in await cm.node.run_instances([good, lost, crashing])}
    assert set(answer) == {good.key, lost.key, crashing.key}
    failed = answer[lost.key]
    assert failed.state == InstanceState.FAILED and failed.error is not None
    assert failed.error.aos_code == AosCode.NOT_FOUND
    assert failed.error.message.startswith("ErrImagePull") and MISSING in failed.error.message
    assert answer[good.key].state != InstanceState.FAILED

    await reported_state(cm, good.key, InstanceState.ACTIVE)
    await reported_state(cm, crashing.key, InstanceState.FAILED)
    await until(lambda: cm.node.last_alert(crashing.key) is not None, 30, "a crash alert")
    alert = cm.node.last_alert(crashing.key)
    assert alert is not None and alert.message.startswith("CrashLoopBackOff"), alert
    items = sorted(c.labels.get("io.aoscore.item", "") for c in containers(docker_runtime, unit))
    assert items == ["crashing", "good"]  # nothing for the image that could not be fetched
    assert cm.reported()[lost.key] == InstanceState.FAILED


async def test_mutual_tls_with_the_unit_pki(
    tmp_path: Path, sms: Sms, unit: str, docker_runtime: DockerRuntime
) -> None:
    pki = init_unit_pki(tmp_path / "pki", ["localhost", "127.0.0.1"], [NODE])
    cm = Cm(tmp_path, pki)
    await cm.start()
    try:
        proc = sms.start(cm, unit, pki.node(NODE))
        await registered(cm, proc)
        wanted = spec("tls")
        [answer] = await cm.node.run_instances([wanted])
        assert answer.state in (InstanceState.ACTIVATING, InstanceState.ACTIVE), answer
        await reported_state(cm, wanted.key, InstanceState.ACTIVE)
        [box] = containers(docker_runtime, unit)
        assert box.status == "running"
        assert proc.stop() == 0
        assert '"tls":true' in proc.output()
    finally:
        await cm.close()


async def test_a_second_sm_with_the_same_node_id_replaces_the_first(
    cm: Cm, sms: Sms, remove_unit: Callable[[str], str]
) -> None:
    first = sms.start(cm, remove_unit(f"test-{uuid.uuid4().hex[:8]}"))
    await registered(cm, first)
    second = sms.start(cm, remove_unit(f"test-{uuid.uuid4().hex[:8]}"), data_dir="sm-data-2")
    await registered(cm, second)
    await logged(first, '"event":"link.replaced"')
    assert "two SMs with one node id take turns" in first.output()
    assert first.stop() == 0 and second.stop() == 0


async def test_mutual_tls_refuses_a_node_id_that_is_not_the_certificates(
    tmp_path: Path, sms: Sms, unit: str
) -> None:
    pki = init_unit_pki(tmp_path / "pki", ["localhost", "127.0.0.1"], [NODE])
    cm = Cm(tmp_path, pki)
    await cm.start()
    try:
        impostor = sms.start(cm, unit, pki.node(NODE), node_id="node-b")
        await logged(impostor, '"event":"link.refused"')
        assert "check --node-id" in impostor.output()
        assert "node-b" not in cm.nodes and not cm.node.connected
        assert impostor.stop() == 0
    finally:
        await cm.close()


async def test_an_item_configs_quotas_are_the_containers_limits(
    cm: Cm, sms: Sms, unit: str, docker_runtime: DockerRuntime
) -> None:
    cpus = int(docker_runtime.client.info()["NCPU"])
    proc = sms.start(cm, unit, extra=("--max-dmips", str(1_000 * cpus)))
    await registered(cm, proc)
    limited, unreadable = spec("limited", LIMITED), spec("unreadable", UNREADABLE)
    answer = {s.key: s for s in await cm.node.run_instances([limited, unreadable])}
    assert answer[limited.key].state != InstanceState.FAILED, answer[limited.key]
    refused = answer[unreadable.key]
    assert refused.state == InstanceState.FAILED and refused.error is not None
    assert refused.error.aos_code == AosCode.INVALID_ARGUMENT
    assert "$.quotas.ramLimit" in refused.error.message
    assert f"aosItemConfig {UNREADABLE.item_config_digest}" in refused.error.message

    await reported_state(cm, limited.key, InstanceState.ACTIVE)
    [box] = containers(docker_runtime, unit)
    host = docker_runtime.client.api.inspect_container(box.id)["HostConfig"]
    assert (host["Memory"], host["PidsLimit"]) == (80 << 20, 24)
    assert host["NanoCpus"] == 250_000_000  # 250 of the 1000 DMIPS each CPU counts for
    assert '"event":"container.limited"' in proc.output()


def node_config(node: str = NODE, priority: int = 1) -> bytes:
    """The node config AosCore's CM sends a node: the unit config's entry for it."""
    return orjson.dumps(
        {
            "node": {"codename": node},
            "nodeGroupSubject": {"codename": "main"},
            "labels": ["mainNode"],
            "priority": priority,
        }
    )


async def asked(cm: Cm, message: sm_pb2.SMIncomingMessages) -> UnitConfigStatus:
    """Send one node config request on the node's stream; its NodeConfigStatus."""
    node = cm.node
    node.config_status = None
    link = node._link
    assert link is not None
    link.outbox.put(message)
    await until(lambda: node.config_status is not None, 30, "the node's NodeConfigStatus")
    assert node.config_status is not None
    return node.config_status


async def test_node_configs_are_checked_and_set_durably(
    cm: Cm, sms: Sms, unit: str, tmp_path: Path
) -> None:
    first = sms.start(cm, unit)
    await registered(cm, first)
    absent = UnitConfigStatus("", UnitConfigState.ABSENT)
    assert await asked(cm, wire.get_node_config_status()) == absent

    check = await asked(cm, wire.check_node_config(NODE, "1.0.0", node_config()))
    assert check == UnitConfigStatus("1.0.0", UnitConfigState.ABSENT)
    other = wire.check_node_config("node-b", "1.0.0", node_config("node-b"))
    refused = await asked(cm, other)
    assert refused.error_info is not None
    assert refused.error_info.aos_code == AosCode.INVALID_ARGUMENT
    assert "'node-b' is not this node 'node-a'" in refused.error_info.message

    installed = UnitConfigStatus("1.0.0", UnitConfigState.INSTALLED)
    assert await asked(cm, wire.set_node_config(NODE, "1.0.0", node_config())) == installed
    stored = orjson.loads((tmp_path / "sm-data" / "sm" / "node-config.json").read_bytes())
    assert (stored["version"], stored["node"]) == ("1.0.0", {"codename": NODE})

    # SIGKILL: what was set holds for the next SM, which refuses going back.
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    await until(lambda: not cm.node.connected, 30, "the CM saw the SM go")
    second = sms.start(cm, unit)
    await registered(cm, second)
    assert await asked(cm, wire.get_node_config_status()) == installed
    older = await asked(cm, wire.set_node_config(NODE, "0.9.0", node_config(priority=5)))
    assert older.state == UnitConfigState.INSTALLED and older.error_info is not None
    assert older.error_info.aos_code == AosCode.WRONG_STATE
    newer = await asked(cm, wire.set_node_config(NODE, "1.1.0", node_config(priority=5)))
    assert newer == UnitConfigStatus("1.1.0", UnitConfigState.INSTALLED)
    assert second.stop() == 0
    assert '"event":"node_config.accepted"' in second.output()


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--cm", "192.0.2.1:9000", "--insecure"], "192.0.2.1"),
        (["--cm", "cm.example:9000", "--insecure"], "cm.example"),
        (["--cm", "127.0.0.1:9000"], "--ca, --cert, --key"),
        (["--cm", "127.0.0.1"], "HOST:PORT"),
    ],
)
def test_bad_usage_exits_2_naming_the_problem(tmp_path: Path, extra: list[str], says: str) -> None:
    args = aoscore_cmd("sm", "--node-id", NODE, "--data-dir", str(tmp_path / "sm"), *extra)
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert says in done.stderr
    assert not (tmp_path / "sm").exists()  # refused before anything was made
