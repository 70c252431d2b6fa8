"""The cloud link over a real WebSocket: a nack's retryAfter is honoured, and a message whose
handler fails unexpectedly is nacked while the link stays up.

Behaviour only: a nacked message is sent again, not before its retryAfter, and because of the
nack (the ack timeout is set far beyond the test). How soon after retryAfter it goes out is a
figure no benchmark reports yet; it is not asserted here.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.protocol import (
    DesiredStatus,
    Envelope,
    Nack,
    UnitStatus,
    dump_frame,
    new_header,
    parse_frame,
)

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


async def start_link(cloud: Cloud, on_message: Any) -> tuple[CloudLink, asyncio.Task[None], Any]:
    server = await serve(cloud.handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    async def on_connect() -> None:
        return None

    link = CloudLink(f"ws://127.0.0.1:{port}", "u1", on_message=on_message, on_connect=on_connect)
    task = asyncio.create_task(link.run())
    await asyncio.wait_for(link.connected.wait(), 10)
    return link, task, server


async def stop_link(link: CloudLink, task: asyncio.Task[None], server: Any) -> None:
    await link.close()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    server.close()
    await server.wait_closed()


async def test_a_nacked_message_is_resent_after_retry_after() -> None:
    cloud = Cloud()

    async def ignore(message: Any, arrived: float) -> None:
        return None

    link, task, server = await start_link(cloud, ignore)
    # Only the nack can cause a resend within the test: the ack timeout is far beyond it.
    link.session.ack_timeout = 3600.0
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


async def test_an_unexpected_handler_error_is_nacked_and_the_link_stays_up() -> None:
    cloud = Cloud()

    async def broken(message: Any, arrived: float) -> None:
        raise OSError(28, "No space left on device")

    link, task, server = await start_link(cloud, broken)
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


async def test_a_cloud_dropping_every_connection_is_backed_off_not_redialled_at_once() -> None:
    """A hostile or broken cloud sends an oversized frame right after each connect. Before,
    every handshake reset the backoff: hundreds of reconnects (and full statuses) a minute.
    A connection that did not stay healthy now counts as a failure, and the delays double."""
    from aoscore_py.cm.communication.health import ReconnectPolicy
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
    link = CloudLink(
        f"ws://127.0.0.1:{port}", "u1", on_message=ignore, on_connect=ignore, reconnect=policy
    )
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
