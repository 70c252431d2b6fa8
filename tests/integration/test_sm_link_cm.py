"""The CM's side of the SM link over real gRPC: `SMServer` on loopback, and scripted SMs that
speak the generated `servicemanager.v5` stubs, as any SM (ours or AosCore's) would.

The rules themselves (timeouts, stop lists, serialised calls) are tested without sockets in
tests/unit/cm/launcher/test_nodemanager.py; these check that the adapter moves the messages,
refuses what it must with the right gRPC status, and ends streams when it should.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
import pytest

from aoscore_py.cm.launcher.nodemanager import NodeManager
from aoscore_py.cm.launcher.smserver import SERVER_OPTIONS, SMServer
from aoscore_py.errors import AosCode, AosError, ConfigError
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus, wire
from aoscore_py.nodes.proto import sm_pb2, sm_pb2_grpc
from aoscore_py.protocol import Identity, InstanceState, NodeState, RuntimeInfo

pytestmark = pytest.mark.integration

HELD = {"sha256:" + c * 64 for c in "abc"}
# The SM's channel options, from docs/sm-protocol.md ("Transport").
SM_OPTIONS = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
)


def blob_urls(digests: Sequence[str]) -> list[str]:
    for digest in digests:
        if digest not in HELD:
            raise AosError(f"blob {digest} is not in the store", code=AosCode.NOT_FOUND)
    return [f"http://127.0.0.1:9/blobs/{d}" for d in digests]


def key(item: str) -> InstanceKey:
    return InstanceKey(item, "s", 0)


def spec(item: str) -> InstanceSpec:
    image = ImageLayout(f"index:{item}", f"sha256:{item}", {}, f"config:{item}", ())
    return InstanceSpec(key(item), "service", "1.0", image)


def status(item: str, node: str = "n1", state: InstanceState = InstanceState.ACTIVE):
    return InstanceStatus(key(item), "1.0", node, state)


def sm_info(node: str) -> sm_pb2.SMOutgoingMessages:
    return wire.sm_info(node, [RuntimeInfo(Identity(codename="docker"), "docker")])


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


class ScriptedSM:
    """An SM that sends what the test says and reads what the CM sends, over a real channel."""

    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        if credentials is None:
            self.channel = grpc.aio.insecure_channel(target, options=SM_OPTIONS)
        else:
            self.channel = grpc.aio.secure_channel(target, credentials, options=SM_OPTIONS)
        self.stub = sm_pb2_grpc.SMServiceStub(self.channel)
        self.call = self.stub.RegisterSM()

    async def send(self, message: sm_pb2.SMOutgoingMessages) -> None:
        await self.call.write(message)

    async def read(self, case: str) -> object:
        """The next message of `case` from the CM (others are skipped)."""
        async with asyncio.timeout(5):
            while True:
                message = await self.call.read()
                assert message is not grpc.aio.EOF, "the CM ended the stream"
                if message.WhichOneof("SMIncomingMessage") == case:
                    return getattr(message, case)

    async def ended(self) -> tuple[grpc.StatusCode, str]:
        """How the CM ended the stream (what it sent before is read first, as gRPC gives the
        status only after the messages)."""
        async with asyncio.timeout(5):
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await self.call.read() is not grpc.aio.EOF:
                    pass
            return await self.call.code(), await self.call.details()

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def cm() -> AsyncIterator[tuple[SMServer, NodeManager, list[str]]]:
    changed: list[str] = []
    nodes = NodeManager(["n1", "n2"], answer_timeout_s=5.0, on_node_changed=changed.append)
    server = SMServer(nodes, blob_urls, "127.0.0.1:0", insecure=True)
    await server.start()
    yield server, nodes, changed
    await server.stop()


@pytest.fixture
async def sms(cm) -> AsyncIterator[Callable[..., ScriptedSM]]:
    made: list[ScriptedSM] = []

    def make(credentials: grpc.ChannelCredentials | None = None, host: str = "127.0.0.1"):
        sm = ScriptedSM(f"{host}:{cm[0].port}", credentials)
        made.append(sm)
        return sm

    yield make
    for sm in made:
        await sm.close()


async def test_sm_info_registers_the_node_and_its_instances_are_seen(cm, sms) -> None:
    server, nodes, changed = cm
    assert server.port > 0
    sm = sms()
    await sm.send(sm_info("n1"))
    connection = await sm.read("connection_status")
    assert connection.cloud_status == sm_pb2.DISCONNECTED
    await until(lambda: nodes["n1"].connected)
    assert (await nodes["n1"].node_info()).is_connected

    await sm.send(wire.node_instances_status([status("a"), status("b")]))
    await until(lambda: changed == ["n1"])
    assert await nodes["n1"].instance_statuses() == [status("a"), status("b")]
    assert nodes.candidates() == ["n1"]


async def test_run_instances_round_trips_update_instances(cm, sms) -> None:
    _, nodes, changed = cm
    sm = sms()
    await sm.send(sm_info("n1"))
    await sm.send(wire.node_instances_status([status("a"), status("old")]))
    await until(lambda: changed == ["n1"])

    call = asyncio.create_task(nodes["n1"].run_instances([spec("a"), spec("c")]))
    update = await sm.read("update_instances")
    assert [wire.instance_key(i.instance) for i in update.start_instances] == [key("a"), key("c")]
    assert [i.manifest_digest for i in update.start_instances] == ["sha256:a", "sha256:c"]
    assert [wire.instance_key(i) for i in update.stop_instances] == [key("old")]

    answer = [status("a"), status("c", state=InstanceState.ACTIVATING)]
    await sm.send(wire.update_instances_status(answer))
    assert await asyncio.wait_for(call, 5) == answer
    assert await nodes["n1"].instance_statuses() == answer


async def test_get_blobs_infos_answers_urls_in_order(cm, sms) -> None:
    sm = sms()
    digests = sorted(HELD, reverse=True)
    answer = await sm.stub.GetBlobsInfos(sm_pb2.BlobsInfosRequest(digests=digests))
    assert list(answer.urls) == [f"http://127.0.0.1:9/blobs/{d}" for d in digests]


async def test_get_blobs_infos_fails_not_found_for_a_blob_the_cm_lacks(cm, sms) -> None:
    sm = sms()
    missing = "sha256:" + "f" * 64
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await sm.stub.GetBlobsInfos(sm_pb2.BlobsInfosRequest(digests=[*HELD, missing]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing in (caught.value.details() or "")


async def test_a_stream_that_does_not_open_with_sm_info_is_refused(cm, sms) -> None:
    _, nodes, _ = cm
    sm = sms()
    await sm.send(wire.node_instances_status([status("a")]))
    code, details = await sm.ended()
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "sm_info" in details
    assert nodes.candidates() == []


async def test_a_bad_message_is_skipped_and_the_stream_stays(cm, sms) -> None:
    _, nodes, changed = cm
    sm = sms()
    await sm.send(sm_info("n1"))
    bad = wire.node_instances_status([status("a")])
    bad.node_instances_status.instances[0].state = "sleeping"
    await sm.send(bad)
    await sm.send(wire.node_instances_status([status("b")]))
    await until(lambda: changed == ["n1"])
    assert await nodes["n1"].instance_statuses() == [status("b")]


async def test_a_reconnecting_sm_replaces_its_old_stream(cm, sms) -> None:
    _, nodes, _ = cm
    old = sms()
    await old.send(sm_info("n1"))
    await old.read("connection_status")
    new = sms()
    await new.send(sm_info("n1"))
    await new.read("connection_status")
    code, details = await old.ended()
    assert code == grpc.StatusCode.ABORTED
    assert "replaced" in details
    await asyncio.sleep(0.05)  # the old stream's end must not disconnect the node
    assert nodes["n1"].connected
    await new.send(wire.node_instances_status([status("z")]))
    await until(lambda: bool(nodes["n1"]._statuses))
    assert await nodes["n1"].instance_statuses() == [status("z")]


async def test_an_sm_that_goes_away_is_disconnected(cm, sms) -> None:
    _, nodes, _ = cm
    sm = sms()
    await sm.send(sm_info("n2"))
    await until(lambda: nodes["n2"].connected)
    await sm.call.done_writing()
    await until(lambda: not nodes["n2"].connected)
    assert (await sm.ended())[0] == grpc.StatusCode.OK

    other = sms()
    await other.send(sm_info("n1"))
    await until(lambda: nodes["n1"].connected)
    await other.close()
    await until(lambda: not nodes["n1"].connected)


async def test_stop_ends_every_stream(cm, sms) -> None:
    server, nodes, _ = cm
    first, second = sms(), sms()
    await first.send(sm_info("n1"))
    await second.send(sm_info("n2"))
    await until(lambda: nodes.candidates() == ["n1", "n2"])
    await server.stop()
    for sm in (first, second):
        code, details = await sm.ended()
        assert code == grpc.StatusCode.UNAVAILABLE
        assert "stopping" in details
    assert nodes.candidates() == []


async def test_a_node_gone_past_its_timeout_is_reported_error() -> None:
    changed: list[str] = []
    nodes = NodeManager(["n1"], node_timeout_s=0.2, on_node_changed=changed.append)
    async with SMServer(nodes, blob_urls, "127.0.0.1:0", insecure=True) as server:
        sm = ScriptedSM(f"127.0.0.1:{server.port}")
        await sm.send(sm_info("n1"))
        await until(lambda: nodes["n1"].connected)
        await sm.close()
        await until(lambda: changed == ["n1"])
        assert nodes["n1"].state == NodeState.ERROR
        assert nodes["n1"].ever_connected


async def test_mutual_tls_node_id_must_be_the_certificate_name(tmp_path: Path) -> None:
    from aoscore_py.iam.tls import grpc_channel_credentials, grpc_server_credentials
    from aoscore_py.iam.unitpki import init_unit_pki

    pki = init_unit_pki(tmp_path / "pki", ["localhost", "127.0.0.1"], ["n1", "n2"])
    credentials = grpc_server_credentials(pki.ca, pki.cm.cert, pki.cm.key)
    nodes = NodeManager(["n1", "n2"])
    async with SMServer(nodes, blob_urls, "127.0.0.1:0", credentials=credentials) as server:
        n2 = pki.node("n2")
        as_n2 = grpc_channel_credentials(n2.ca, n2.cert, n2.key)
        impostor = ScriptedSM(f"127.0.0.1:{server.port}", as_n2)
        await impostor.send(sm_info("n1"))
        code, details = await impostor.ended()
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "'n2'" in details
        assert not nodes["n1"].connected

        honest = ScriptedSM(f"127.0.0.1:{server.port}", as_n2)
        await honest.send(sm_info("n2"))
        await honest.read("connection_status")
        assert nodes.candidates() == ["n2"]
        for sm in (impostor, honest):
            await sm.close()


class TestConfiguration:
    @pytest.mark.parametrize("address", ["0.0.0.0:0", "192.0.2.7:9000", "cm.example:9000"])
    def test_plaintext_is_refused_off_loopback(self, address: str) -> None:
        with pytest.raises(ConfigError, match=address.rsplit(":", 1)[0]):
            SMServer(NodeManager(), blob_urls, address, insecure=True)

    @pytest.mark.parametrize("address", ["localhost:0", "[::1]:0", "127.0.0.2:0"])
    def test_plaintext_is_allowed_on_loopback(self, address: str) -> None:
        SMServer(NodeManager(), blob_urls, address, insecure=True)

    def test_credentials_or_insecure_must_be_chosen(self) -> None:
        with pytest.raises(ConfigError, match="credentials"):
            SMServer(NodeManager(), blob_urls, "127.0.0.1:0")

    @pytest.mark.parametrize("address", ["9000", "host:", "host:99999", ":9000"])
    def test_address_must_be_host_and_port(self, address: str) -> None:
        with pytest.raises(ConfigError, match="HOST:PORT"):
            SMServer(NodeManager(), blob_urls, address, insecure=True)

    def test_keepalive_allows_the_sm_pings(self) -> None:
        options = dict(SERVER_OPTIONS)
        assert options["grpc.http2.min_ping_interval_without_data_ms"] <= 20_000
        assert options["grpc.keepalive_permit_without_calls"] == 1

    async def test_an_address_in_use_is_a_config_error(self) -> None:
        async with SMServer(NodeManager(), blob_urls, "127.0.0.1:0", insecure=True) as first:
            second = SMServer(NodeManager(), blob_urls, f"127.0.0.1:{first.port}", insecure=True)
            with pytest.raises(ConfigError, match="cannot listen"):
                await second.start()
