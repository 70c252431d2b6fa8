"""`scripts/bench fleet`: one reference cloud process and N simulated units, one push to all.

The cloud runs as it would for a fleet (`aoscore cloud serve` over TLS, its own CA, one-use
provisioning tokens, HTTPS discovery, units on wss with their certificate and bearer token).
The units run in a few worker processes (`fleetunit.py`), each unit with its own identity,
store and outbox. Provisioning and connecting are set-up, not timed. Then a desired status is
pushed to every unit at once (at most `PUSH_PARALLEL` operator requests in flight) and the
clock runs until each unit has acked it and the cloud's timeline holds the unit's full status
naming the pushed item: per unit, from the push's start to that status's arrival (its
`receivedAt`). Reported: p50, p99 and the total, and the cloud's resident size at the end.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aoscore_py.cloud import client
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.state import CloudState
from aoscore_py.powercut.testbed import PYTHON, CloudProcess, aoscore_cmd
from aoscore_py.protocol import DesiredItem, DesiredStatus, Identity

from .memory import footprint

PUSH_PARALLEL = 100
READY_TIMEOUT_S = 600.0
DONE_TIMEOUT_S = 120.0
ITEM = "fleet-item"
DIGEST = "sha256:" + "f" * 64
HERE = Path(__file__).resolve().parent


def _desired(version: str) -> DesiredStatus:
    item = DesiredItem(Identity(id=ITEM, type="service"), version, DIGEST, Identity(id="owner"))
    return DesiredStatus(items=(item,))


def _tokens(cloud_dir: Path, count: int) -> list[str]:
    out = subprocess.run(
        aoscore_cmd("cloud", "token", "new", "--cloud-dir", str(cloud_dir), "--count", str(count)),
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    if len(out) != count:
        raise RuntimeError(f"asked for {count} tokens, got {len(out)}")
    return out


def _start_workers(
    cloud: CloudProcess, work: Path, tokens_file: Path, units: int, workers: int
) -> list[subprocess.Popen[str]]:
    per = -(-units // workers)
    procs = []
    for w in range(workers):
        first, count = w * per, min(per, units - w * per)
        if count <= 0:
            break
        procs.append(
            subprocess.Popen(
                [
                    PYTHON,
                    str(HERE / "fleetunit.py"),
                    "--discovery",
                    cloud.endpoints["discovery"],
                    "--cloud-ca",
                    cloud.endpoints["cloudCa"],
                    "--work",
                    str(work / "units"),
                    "--tokens",
                    str(tokens_file),
                    "--first",
                    str(first),
                    "--count",
                    str(count),
                ],
                stdout=subprocess.PIPE,
                stderr=open(work / f"worker-{w}.log", "w"),  # noqa: SIM115 - closed with the process
                text=True,
                env={**os.environ, "PYTHONPATH": str(HERE.parent.parent)},
            )
        )
    return procs


def _wait_ready(procs: list[subprocess.Popen[str]], units: int) -> None:
    ready = 0
    deadline = time.monotonic() + READY_TIMEOUT_S
    for proc in procs:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"a fleet worker stopped before it was ready (rc {proc.poll()})")
            if line.startswith("ready "):
                ready += int(line.split()[1])
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ready} of {units} units ready in {READY_TIMEOUT_S} s")


async def _push_all(cloud: CloudProcess, system_ids: list[str], ds: DesiredStatus) -> list[dict]:
    gate = asyncio.Semaphore(PUSH_PARALLEL)
    url, token = cloud.operator_url, cloud.operator_token

    async def one(unit: str) -> dict[str, Any]:
        async with gate:
            return await client.push(url, unit, ds, timeout_s=DONE_TIMEOUT_S, token=token)

    return await asyncio.gather(*(one(u) for u in system_ids))


def _arrival(records: list[dict[str, Any]], version: str, since: float) -> float | None:
    """When the first full status naming the pushed item at `version` arrived."""
    for record in records:
        status = record["unitStatus"]
        if status.get("isDeltaInfo") or record["receivedAt"] < since:
            continue
        if any(i["item"]["id"] == ITEM and i["version"] == version for i in status["items"]):
            return float(record["receivedAt"])
    return None


def measure(
    work: Path, units: int, workers: int, timeline: Callable[[CloudState, str], list[dict]]
) -> dict[str, Any]:
    """Run the fleet; the figures. `timeline(state, unit)` reads a unit's recorded statuses;
    the wait reads after the push's answers, so it does not compete with the cloud for them.
    """
    with Registry(work / "registry") as registry:
        cloud = CloudProcess(work / "cloud", registry.url, tls=True).start()
        procs: list[subprocess.Popen[str]] = []
        try:
            tokens_file = work / "tokens.txt"
            tokens_file.write_text("\n".join(_tokens(cloud.cloud_dir, units)) + "\n")
            started = time.monotonic()
            procs = _start_workers(cloud, work, tokens_file, units, workers)
            _wait_ready(procs, units)
            setup_s = time.monotonic() - started
            system_ids = sorted(
                (work / "units" / d / "identity" / "system_id").read_text().strip()
                for d in os.listdir(work / "units")
            )
            version = "2.0.0"
            pushed_at = time.time()
            answers = asyncio.run(_push_all(cloud, system_ids, _desired(version)))
            nacked = [a for a in answers if not a.get("ok")]
            if nacked:
                raise RuntimeError(f"{len(nacked)} units did not ack: {nacked[:3]}")
            latencies: dict[str, float] = {}
            deadline = time.monotonic() + DONE_TIMEOUT_S
            state = cloud.state  # one reader for the whole wait
            while len(latencies) < len(system_ids):
                for unit in system_ids:
                    if unit not in latencies:
                        at = _arrival(timeline(state, unit), version, pushed_at)
                        if at is not None:
                            latencies[unit] = at - pushed_at
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{len(system_ids) - len(latencies)} units' statuses missing after "
                        f"{DONE_TIMEOUT_S} s"
                    )
                time.sleep(0.5)
            assert cloud.process is not None
            cloud_rss = footprint(cloud.process.pid).rss_mib
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            cloud.stop()
    ordered = sorted(latencies.values())

    def quantile(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {
        "units": len(system_ids),
        "workers": len(procs),
        "p50_s": round(quantile(0.5), 3),
        "p99_s": round(quantile(0.99), 3),
        "total_s": round(ordered[-1], 3),
        "cloud_rss_mb": cloud_rss,
        "setup_s": round(setup_s, 1),
        "goal_total_s": 10.0,
        "python": sys.version.split()[0],
    }
