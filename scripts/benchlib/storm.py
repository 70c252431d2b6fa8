"""`scripts/bench storm`: the agent's memory through a reconnect storm, and after it.

A loopback WebSocket peer plays the cloud. Calm, it acks every frame. Hostile, it sends a frame
over the agent's size limit right after each connect, so every connection dies at once (the
attack the cloud-link issue describes: before the backoff fix, 450 reconnects and full statuses
in 3.5 minutes took the agent from 56 MB to 420 MB, where it stayed). The agent (`aoscore agent
--no-local-sm`, no Docker needed) runs with a redial schedule squeezed far below the fleet's
(`RECONNECT`), so that the storm makes hundreds of connects in a short run. Its resident size
(VmRSS) is read calm (the baseline), at the end of the storm (the peak), and after a calm
settle period with the link healthy again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from aoscore_py.powercut.testbed import AgentLog, Process, aoscore_cmd
from aoscore_py.protocol import (
    MAX_MESSAGE_BYTES,
    Ack,
    Envelope,
    dump_frame,
    new_header,
    parse_frame,
)

from .memory import footprint

UNIT = "storm-unit"
RECONNECT = (
    "--reconnect-min",
    "0.05",
    "--reconnect-max",
    "0.2",
    "--breaker-failures",
    "100000",
    "--healthy-after",
    "5",
)


class Peer:
    """The cloud, calm or hostile, on a loop in its own thread."""

    def __init__(self) -> None:
        self.hostile = False
        self.connects = 0
        self.port = 0
        self._calm: set[ServerConnection] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="storm-peer", daemon=True)

    async def _handler(self, ws: ServerConnection) -> None:
        self.connects += 1
        if self.hostile:
            await ws.send(b"x" * (MAX_MESSAGE_BYTES + 1))
            await ws.wait_closed()
            return
        self._calm.add(ws)
        try:
            async for raw in ws:
                txn = parse_frame(raw).header.txn
                await ws.send(dump_frame(Envelope(new_header(UNIT, txn=txn), Ack())))
        finally:
            self._calm.discard(ws)

    def turn_hostile(self) -> None:
        """From now on every connection gets an oversized frame; the calm one is closed."""
        self.hostile = True

        async def close_calm() -> None:
            await asyncio.gather(*(ws.close(1011, "storm") for ws in list(self._calm)))

        asyncio.run_coroutine_threadsafe(close_calm(), self._loop).result(10)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with serve(self._handler, "127.0.0.1", 0, max_size=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def _run(self) -> None:
        self._loop.run_until_complete(self._main())

    def start(self) -> Peer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def measure(work: Path, storm_s: float, settle_s: float) -> dict[str, Any]:
    peer = Peer().start()
    agent = Process(
        aoscore_cmd(
            "agent",
            "--cloud",
            f"ws://127.0.0.1:{peer.port}",
            "--system-id",
            UNIT,
            "--data-dir",
            str(work / "agent"),
            "--no-local-sm",
            "--insecure",
            "--sm-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            *RECONNECT,
        ),
        work / "agent.log",
    )
    try:
        AgentLog(work / "agent.log").wait_for("link.up", 30)
        time.sleep(settle_s)
        baseline = footprint(agent.pid).rss_mib
        connects_before = peer.connects
        peer.turn_hostile()
        time.sleep(storm_s)
        peak = footprint(agent.pid).rss_mib
        storm_connects = peer.connects - connects_before
        peer.hostile = False
        time.sleep(settle_s)
        after = footprint(agent.pid).rss_mib
    finally:
        agent.stop()
        peer.stop()
    return {
        "storm_s": storm_s,
        "reconnects": storm_connects,
        "baseline_rss_mb": baseline,
        "storm_end_rss_mb": peak,
        "after_rss_mb": after,
        "after_over_baseline": round(after / baseline, 3),
    }
