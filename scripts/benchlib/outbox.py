"""`scripts/bench outbox`: statuses through the durable outbox against raw SQLite commits.

One side queues unit statuses through a real `CloudLink` whose outbox is the agent's SQLite
store, to a loopback WebSocket peer that acks each one: enqueue (a commit), send, ack, delete
(batched, or taken along by the next enqueue's commit). It is timed until every status of the
round is acked and deleted. The peer side is a raw one-row commit (WAL, `synchronous=FULL`)
through `sqlite3`, in the same folder. Rounds alternate sides after untimed warm-up rounds; the
figures are the totals over the timed rounds.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.cm.communication.outbox import Outbox, OutboxLimits
from aoscore_py.cm.communication.targets import StaticTargets
from aoscore_py.protocol import Ack, Envelope, UnitStatus, dump_frame, new_header, parse_frame
from aoscore_py.storage import Storage

SYSTEM_ID = "bench-outbox"
WAIT_S = 60.0


def bare_link(url: str, system_id: str, storage: Storage, limits: OutboxLimits) -> CloudLink:
    """A cloud link to `url` whose outbox is `storage`, taking no message and sending nothing
    on connect: only what a bench queues goes out."""

    async def ignore(*_args: object) -> None:
        return None

    outbox = Outbox(storage, time.monotonic, time.time, limits)
    return CloudLink(StaticTargets(url), system_id, outbox, on_message=ignore, on_connect=ignore)


async def _acking_peer(ws: ServerConnection) -> None:
    async for raw in ws:
        txn = parse_frame(raw).header.txn
        await ws.send(dump_frame(Envelope(new_header(SYSTEM_ID, txn=txn), Ack())))


async def _outbox_round(link: CloudLink, statuses: int, seq: int) -> float:
    """Queue `statuses` statuses; seconds until all are acked and deleted from the store."""
    started = time.perf_counter()
    for n in range(statuses):
        await link.send(UnitStatus(is_delta_info=True, seq=seq + n))
    deadline = time.monotonic() + WAIT_S
    while link.outbox.depth:
        if time.monotonic() > deadline:
            raise RuntimeError(f"outbox: {link.outbox.depth} statuses not acked in {WAIT_S} s")
        await asyncio.sleep(0.0005)
    link.outbox.flush_acked()
    return time.perf_counter() - started


async def measure(work: Path, statuses: int, rounds: int, raw: Any) -> dict[str, Any]:
    """Alternate outbox and raw rounds; totals of the timed ones (the first of each is not)."""
    server = await serve(_acking_peer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    storage = Storage(work / "agent")
    link = bare_link(
        f"ws://127.0.0.1:{port}", SYSTEM_ID, storage, OutboxLimits(max_count=statuses * 2)
    )
    task = asyncio.create_task(link.run())
    outbox_s = raw_s = 0.0
    seq = 1
    try:
        await asyncio.wait_for(link.connected.wait(), WAIT_S)
        for r in range(rounds + 1):
            for side in ("outbox", "raw") if r % 2 else ("raw", "outbox"):
                if side == "outbox":
                    elapsed = await _outbox_round(link, statuses, seq)
                    seq += statuses
                else:
                    started = time.perf_counter()
                    for _ in range(statuses):
                        raw.once()
                    elapsed = time.perf_counter() - started
                if r == 0:
                    continue
                if side == "outbox":
                    outbox_s += elapsed
                else:
                    raw_s += elapsed
    finally:
        await link.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        server.close()
        await server.wait_closed()
        storage.close()
    timed = statuses * rounds
    per_s = timed / outbox_s
    raw_per_s = timed / raw_s
    return {
        "statuses": timed,
        "per_s": round(per_s, 1),
        "raw_per_s": round(raw_per_s, 1),
        "ratio": round(raw_per_s / per_s, 3),
        "goal_ratio": 3.0,
    }
