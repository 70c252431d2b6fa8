"""The cloud link over a real WebSocket: a nack's retryAfter is honoured, and a message whose
handler fails unexpectedly is nacked while the link stays up.

Behaviour only: a nacked message is sent again, not before its retryAfter, and because of the
nack (the ack timeout is set far beyond the test). How soon after retryAfter it goes out is a
figure no benchmark reports yet; it is not asserted here.
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from aoscore_py.cm.communication.health import ReconnectPolicy
from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.cm.communication.outbox import Outbox, OutboxLimits
from aoscore_py.cm.communication.targets import StaticTargets
from aoscore_py.protocol import (
    Ack,
    DesiredStatus,
    Envelope,
    Nack,
    UnitStatus,
    dump_frame,
    new_header,
    parse_frame,
)
from aoscore_py.storage import Storage

pytestmark = pytest.mark.integration

RETRY_AFTER_MS = 100
WAIT_S = 10.0  # how long a test waits for a frame before failing: a guard, not a figure


class Cloud:
    """A scripted peer: nacks the first unitStatus, records every frame with its time."""

    def __init__(self) -> None:
        self.frames: list[tuple[float, Envelope]] = []
        self.ws: ServerConnection | None = None
        self.connected = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.connected.set()
        async for raw in ws:
            env = parse_frame(raw)
            self.frames.append((time.monotonic(), env))
            statuses = [e for _, e in self.frames if isinstance(e.data, UnitStatus)]
            if isinstance(env.data, UnitStatus) and len(statuses) == 1:
                nack = Nack(retry_after=RETRY_AFTER_MS)
                await ws.send(dump_frame(Envelope(new_header("u1", txn=env.header.txn), nack)))


def new_link(
    url: str,
    data_dir: Path,
    on_message: Any,
    *,
    limits: OutboxLimits | None = None,
    reconnect: ReconnectPolicy | None = None,
) -> CloudLink:
    """A link with its outbox in a real store in `data_dir`."""

    async def on_connect() -> None:
        return None

    outbox = Outbox(Storage(data_dir), time.monotonic, time.time, limits or OutboxLimits())
    return CloudLink(
        StaticTargets(url),
        "u1",
        outbox,
        on_message=on_message,
        on_connect=on_connect,
        reconnect=reconnect,
    )


async def start_link(
    cloud: Cloud, on_message: Any, data_dir: Path, limits: OutboxLimits | None = None
) -> tuple[CloudLink, asyncio.Task[None], Any]:
    server = await serve(cloud.handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = new_link(f"ws://127.0.0.1:{port}", data_dir, on_message, limits=limits)
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.connected.wait(), 10)
    return link, task, server


async def stop_link(link: CloudLink, task: asyncio.Task[None], server: Any) -> None:
    await link.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    server.close()
    await server.wait_closed()


async def test_a_nacked_message_is_resent_after_retry_after(tmp_path: Path) -> None:
    cloud = Cloud()

    async def ignore(message: Any, arrived: float) -> None:
        return None

    # Only the nack can cause a resend within the test: the ack timeout is far beyond it.
    link, task, server = await start_link(
        cloud, ignore, tmp_path, OutboxLimits(ack_timeout_s=3600.0)
    )
    try:
        txn = await link.send(UnitStatus(is_delta_info=False))
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and len(cloud.frames) < 2:
            await asyncio.sleep(0.02)
        assert len(cloud.frames) >= 2, "the nacked message was sent again"
        (first, sent), (second, again) = cloud.frames[:2]
        assert isinstance(sent.data, UnitStatus)
        assert again.header.txn == txn and again.data == sent.data, "the same message, again"
        # The nack left after the first frame arrived, so this holds on any machine.
        assert second - first >= RETRY_AFTER_MS / 1000, "not before retryAfter"
    finally:
        await stop_link(link, task, server)


async def test_an_unexpected_handler_error_is_nacked_and_the_link_stays_up(
    tmp_path: Path,
) -> None:
    cloud = Cloud()

    async def broken(message: Any, arrived: float) -> None:
        raise OSError(28, "No space left on device")

    link, task, server = await start_link(cloud, broken, tmp_path)
    try:
        await cloud.connected.wait()
        assert cloud.ws is not None
        frame = dump_frame(Envelope(new_header("u1", txn="t-ds"), DesiredStatus()))
        await cloud.ws.send(frame)
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and not cloud.frames:
            await asyncio.sleep(0.02)
        (_, reply), *_ = cloud.frames
        assert isinstance(reply.data, Nack) and reply.header.txn == "t-ds"
        assert reply.data.error_info is not None
        assert "No space left" in reply.data.error_info.message
        assert not task.done() and link.connected.is_set()
        assert orjson.loads(dump_frame(reply))["data"]["errorInfo"]["aosCode"] == 1
    finally:
        await stop_link(link, task, server)


async def test_a_cloud_dropping_every_connection_is_backed_off_not_redialled_at_once(
    tmp_path: Path,
) -> None:
    """A hostile or broken cloud sends an oversized frame right after each connect. Before,
    every handshake reset the backoff: hundreds of reconnects (and full statuses) a minute.
    A connection that did not stay healthy now counts as a failure, and the delays double."""
    from aoscore_py.protocol import MAX_MESSAGE_BYTES

    connects: list[float] = []

    async def hostile(ws: ServerConnection) -> None:
        connects.append(time.monotonic())
        await ws.send(b"x" * (MAX_MESSAGE_BYTES + 1))
        await ws.wait_closed()

    async def ignore(*_args: Any) -> None:
        return None

    server = await serve(hostile, "127.0.0.1", 0, max_size=None)
    port = server.sockets[0].getsockname()[1]
    policy = ReconnectPolicy(initial_s=0.1, jitter=0.0, healthy_after_s=5.0)
    link = new_link(f"ws://127.0.0.1:{port}", tmp_path, ignore, reconnect=policy)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.sleep(2.5)
    finally:
        await stop_link(link, task, server)
    # 0.1 + 0.2 + 0.4 + 0.8 s of delays fit in 2.5 s: at most 5 connects (a reset on every
    # handshake would make it about 20).
    assert 3 <= len(connects) <= 6, connects
    gaps = [b - a for a, b in itertools.pairwise(connects)]
    assert gaps == sorted(gaps), "each delay longer than the last"
    assert link.health.failures >= 3


class AckingCloud:
    """A peer that acks every frame (or, while `silent`, none) and records them in order."""

    def __init__(self) -> None:
        self.frames: list[Envelope] = []
        self.silent = False

    async def handler(self, ws: ServerConnection) -> None:
        async for raw in ws:
            env = parse_frame(raw)
            self.frames.append(env)
            if not self.silent:
                await ws.send(dump_frame(Envelope(new_header("u1", txn=env.header.txn), Ack())))

    def seqs(self) -> list[int | None]:
        return [e.data.seq for e in self.frames if isinstance(e.data, UnitStatus)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {WAIT_S} s"
        await asyncio.sleep(0.02)


async def test_statuses_made_offline_reach_the_cloud_in_order_once_it_is_back(
    tmp_path: Path,
) -> None:
    """AosCore drops what it makes while offline; ours keeps it in the outbox (buffer-only),
    drains it in order after the reconnect (recovering), then sends directly."""
    port = free_port()
    cloud = AckingCloud()

    async def ignore(*_args: Any) -> None:
        return None

    policy = ReconnectPolicy(initial_s=0.1, jitter=0.0, cap_s=0.2, healthy_after_s=5.0)
    link = new_link(
        f"ws://127.0.0.1:{port}", tmp_path, ignore, reconnect=policy, limits=OutboxLimits(window=4)
    )
    task = asyncio.create_task(link.run())
    server = None
    try:
        for seq in range(1, 21):
            await link.send(UnitStatus(is_delta_info=True, seq=seq))
        assert link.outbox.mode.value == "buffer-only" and link.outbox.depth == 20
        server = await serve(cloud.handler, "127.0.0.1", port)
        await wait_for(lambda: link.outbox.depth == 0, "the backlog drained")
        await link.send(UnitStatus(is_delta_info=True, seq=21))
        await wait_for(lambda: len(cloud.frames) == 21, "the new status arrived")
        assert cloud.seqs() == list(range(1, 22)), "every status, once, in order"
        assert link.outbox.mode.value == "direct"
        await wait_for(lambda: not link.outbox.storage.outbox_entries(), "acked ones deleted")
    finally:
        await link.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if server is not None:
            server.close()
            await server.wait_closed()


async def test_an_unacknowledged_status_survives_a_restart_and_goes_out_with_its_txn(
    tmp_path: Path,
) -> None:
    cloud = AckingCloud()
    cloud.silent = True

    async def ignore(*_args: Any) -> None:
        return None

    link, task, server = await start_link(cloud, ignore, tmp_path)
    try:
        txns = [await link.send(UnitStatus(is_delta_info=False, seq=n)) for n in (1, 2, 3)]
        await wait_for(lambda: len(cloud.frames) == 3, "three statuses sent")
    finally:
        await stop_link(link, task, server)
    assert link.outbox.depth == 3, "nothing acked, nothing forgotten"
    cloud = AckingCloud()
    link, task, server = await start_link(cloud, ignore, tmp_path)
    try:
        await wait_for(lambda: link.outbox.depth == 0, "the stored statuses acked")
        assert [e.header.txn for e in cloud.frames] == txns, "same txns, same order"
        assert cloud.seqs() == [1, 2, 3]
    finally:
        await stop_link(link, task, server)


async def test_a_status_without_an_ack_is_sent_again_with_the_same_bytes(
    tmp_path: Path,
) -> None:
    raws: list[bytes | str] = []

    async def ack_the_second_copy(ws: ServerConnection) -> None:
        async for raw in ws:
            raws.append(raw)
            if len(raws) == 2:
                env = parse_frame(raw)
                await ws.send(dump_frame(Envelope(new_header("u1", txn=env.header.txn), Ack())))

    async def ignore(*_args: Any) -> None:
        return None

    server = await serve(ack_the_second_copy, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = new_link(
        f"ws://127.0.0.1:{port}", tmp_path, ignore, limits=OutboxLimits(ack_timeout_s=0.3)
    )
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), WAIT_S)
        await link.send(UnitStatus(is_delta_info=False, seq=7))
        await wait_for(lambda: link.outbox.depth == 0, "the resend acked")
        assert len(raws) == 2 and raws[0] == raws[1], "the same frame: the cloud can dedupe"
    finally:
        await stop_link(link, task, server)


async def test_a_dead_link_is_found_within_three_keepalives(tmp_path: Path) -> None:
    """A link that silently stops carrying anything (a gateway that black-holes the traffic)
    is closed once a ping goes unanswered: within the ping interval, its timeout and the close
    handshake's (each a keepalive, the last at most 10 s: 50 s at the default 20, under the
    60 s the fleet asks for), and the outbox goes back to buffering."""
    from aoscore_py.powercut.linkproxy import LinkProxy

    cloud = AckingCloud()
    server = await serve(cloud.handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    keepalive = 0.5

    async def ignore(*_args: Any) -> None:
        return None

    with LinkProxy("127.0.0.1", port) as proxy:
        outbox = Outbox(Storage(tmp_path), time.monotonic, time.time, OutboxLimits())
        link = CloudLink(
            StaticTargets(proxy.url_for("ws")),
            "u1",
            outbox,
            on_message=ignore,
            on_connect=ignore,
            reconnect=ReconnectPolicy(initial_s=60.0, jitter=0.0),
            ping_interval_s=keepalive,
        )
        task = asyncio.create_task(link.run())
        try:
            await asyncio.wait_for(link.connected.wait(), WAIT_S)
            proxy.set_latency(3600.0, 3600.0)  # nothing gets through any more
            went_dead = time.monotonic()
            await wait_for(lambda: not link.connected.is_set(), "the dead link found")
            assert time.monotonic() - went_dead < 3 * keepalive + 1.0
            assert link.outbox.mode.value == "buffer-only"
        finally:
            proxy.drop_all()  # the cloud's side of the black-holed connection, at once
            await stop_link(link, task, server)
