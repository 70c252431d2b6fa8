"""Simulated units for `scripts/bench fleet`: the real identity, discovery, TLS, link, session
and durable outbox, without Docker.

One process runs many units on one event loop. Each provisions itself with its token on first
start (its key, certificate and system id under its own data dir), discovers the cloud, dials
its wss URL with its certificate and bearer token, and keeps a real SQLite store for its outbox
and sequence numbers. It acks a desired status as the agent does (after taking it) and answers
with a full unit status naming the items it was given, through the outbox; a full status also
goes out on every connect.

Run: `python scripts/benchlib/fleetunit.py --discovery URL --cloud-ca FILE --work DIR --tokens
FILE --first I --count N`. It prints `ready N` once every unit is connected, then `acked SYSTEM_ID`
for each desired status taken, and stops cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import uuid
from pathlib import Path

from aoscore_py.cm.communication.discovery import Discovery
from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.cm.communication.outbox import Outbox
from aoscore_py.cm.updatemanager.unitstatus import SequenceNumbers
from aoscore_py.iam.identity import ensure_identity
from aoscore_py.logs import configure as configure_logs
from aoscore_py.protocol import (
    DesiredStatus,
    Identity,
    ItemState,
    ItemStatus,
    Message,
    NodeInfo,
    NodeState,
    UnitStatus,
)
from aoscore_py.storage import Storage


class SimUnit:
    """One unit: a real link and outbox, and a status that says which items it was given."""

    def __init__(self, data_dir: Path, discovery: Discovery, system_id: str) -> None:
        self.system_id = system_id
        self.storage = Storage(data_dir)
        self.boot_id = uuid.uuid4().hex
        self._seq = SequenceNumbers(self.storage)
        self._items: tuple[ItemStatus, ...] = ()
        outbox = Outbox(self.storage, time.monotonic, time.time)
        self.link = CloudLink(
            discovery,
            system_id,
            outbox,
            on_message=self._on_message,
            on_connect=self._on_connect,
        )

    def status(self) -> UnitStatus:
        node = NodeInfo(Identity(codename="node-1"), NodeState.PROVISIONED, True)
        return UnitStatus(
            is_delta_info=False,
            unit_config=(),
            nodes=(node,),
            items=self._items,
            instances=(),
            subjects=(),
            boot_id=self.boot_id,
            seq=self._seq.next(),
        )

    async def _on_message(self, message: Message, arrived: float) -> None:
        if isinstance(message, DesiredStatus):
            self._items = tuple(
                ItemStatus(i.item, i.version, ItemState.INSTALLED) for i in message.items
            )
            print(f"acked {self.system_id}", flush=True)
            asyncio.get_running_loop().call_soon(
                lambda: asyncio.ensure_future(self.link.send(self.status()))
            )

    async def _on_connect(self) -> None:
        await self.link.send(self.status())


async def run(args: argparse.Namespace) -> None:
    tokens = args.tokens.read_text().split()
    units: list[SimUnit] = []
    for n in range(args.first, args.first + args.count):
        data_dir = args.work / f"unit-{n:05d}"
        data_dir.mkdir(parents=True, exist_ok=True)
        identity = await ensure_identity(
            data_dir, token=tokens[n], discovery_url=args.discovery, cloud_ca=args.cloud_ca
        )
        discovery = Discovery(args.discovery, identity, cloud_ca=args.cloud_ca)
        units.append(SimUnit(data_dir, discovery, identity.system_id))
    tasks = [asyncio.create_task(u.link.run()) for u in units]
    await asyncio.gather(*(u.link.connected.wait() for u in units))
    print(f"ready {len(units)}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for u in units:
        await u.link.close()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for u in units:
        u.storage.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--discovery", required=True)
    parser.add_argument("--cloud-ca", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tokens", type=Path, required=True)
    parser.add_argument("--first", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()
    configure_logs("warning", stream=sys.stderr)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
