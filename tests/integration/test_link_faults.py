"""The cloud link under faults a fleet meets: real agent, real cloud, real Docker, and between
the agent and the cloud a loopback proxy the test controls (`powercut.linkproxy.LinkProxy`).

Each test breaks the link while the unit reports or updates, then checks what a user relies on:
the unit converges on its desired status, and the cloud's timeline, read in the unit's order
(`cloud.ordering`), has every status the unit made, once each, none arriving after a later one
(the documented folding of a full outbox aside). The statuses the unit made are read from its
own log (`status.full` and `status.delta` name each `seq` once it is committed to the outbox).

The faults: the cloud killed and restarted while the unit reports; latency each way (1.5 s in
CI, the 30 s of a cellular gateway marked slow); a connection reset in the middle of a status
frame; desired statuses duplicated and reordered; the agent killed with SIGKILL while its outbox
holds statuses the cloud never saw.

`unit` comes first in each test's arguments: pytest tears fixtures down in reverse order, so the
agents are stopped before the unit's containers are removed (a running agent would start them
again).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from aoscore_py.cloud.oci import OciImage
from aoscore_py.cloud.ordering import in_unit_order, summary
from aoscore_py.cloud.registry import Registry
from aoscore_py.powercut.linkproxy import LinkProxy
from aoscore_py.powercut.testbed import (
    AgentLog,
    CloudProcess,
    Process,
    cycle_journal,
    cycle_phase,
    operate,
    push,
    read_store,
    scenario,
    wait_converged,
)
from aoscore_py.protocol import Envelope, dump_frame, new_header
from aoscore_py.sm.docker_runtime import DockerRuntime

from .conftest import Agents

pytestmark = pytest.mark.integration

STATUS_EVENTS = ("status.full", "status.delta")
CONVERGE_S = 90.0
CUT_BYTES = 16  # into a compressed status frame: past its header (6 bytes), before its end


# the link and what crossed it


def cloud_link(cloud: CloudProcess) -> tuple[LinkProxy, str]:
    """A started proxy in front of `cloud`'s unit endpoint, and the URL the agent dials."""
    url = urlsplit(cloud.ws_url)
    assert url.hostname and url.port, cloud.ws_url
    proxy = LinkProxy(url.hostname, url.port)
    proxy.start()
    return proxy, proxy.url_for(url.scheme, url.path)


@pytest.fixture
def link(cloud: CloudProcess) -> Iterator[tuple[LinkProxy, str]]:
    """The session cloud behind a proxy of this test's own."""
    proxy, url = cloud_link(cloud)
    yield proxy, url
    proxy.stop()


def made(*logs: AgentLog) -> list[int]:
    """The seq of every status the unit committed to its outbox, in the order it made them."""
    seqs = [r.get("seq") for log in logs for r in log.records() if r.get("event") in STATUS_EVENTS]
    return [seq for seq in seqs if isinstance(seq, int)]


def queued_statuses(data_dir: Path) -> list[int]:
    """The seqs of the statuses waiting in the agent's outbox for an ack, oldest first."""
    with read_store(data_dir) as storage:
        return [
            e.seq
            for e in storage.outbox_entries()
            if e.message_type == "unitStatus" and e.seq is not None
        ]


def wait_until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


def recorded(cloud: CloudProcess, unit: str) -> list[dict[str, Any]]:
    """The unit's timeline as the cloud recorded it, in arrival order."""
    state = cloud.state
    try:
        return state.timeline(unit)
    finally:
        state.close()


def all_recorded(
    cloud: CloudProcess, unit: str, seqs: Sequence[int], timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The unit's timeline once every status in `seqs` is in it."""
    records: list[dict[str, Any]] = []

    def there() -> bool:
        nonlocal records
        records = recorded(cloud, unit)
        return set(seqs) <= {r["unitStatus"].get("seq") for r in records}

    try:
        wait_until(f"the cloud recording statuses {sorted(seqs)}", there, timeout_s)
    except TimeoutError:
        have = sorted(r["unitStatus"].get("seq") for r in records)
        raise AssertionError(f"lost statuses: {sorted(set(seqs) - set(have))}") from None
    return records


def assert_nothing_lost(records: Sequence[dict[str, Any]], made_seqs: Sequence[int]) -> None:
    """Every status made is recorded once; none missing in unit order, none late, none twice."""
    counts = summary(in_unit_order(records))
    assert counts["missing"] == 0, counts
    assert counts["duplicates"] == 0, counts
    assert counts["late"] == 0, f"a status arrived after a later one: {counts}"
    seqs = [r["unitStatus"].get("seq") for r in records]
    assert seqs == sorted(seqs), "the cloud recorded them in the order the unit made them"
    assert set(made_seqs) <= set(seqs)


def kill(proc: Process) -> None:
    """SIGKILL: no shutdown, nothing flushed but what was committed."""
    proc.signal(signal.SIGKILL)
    proc.stop()


# the cloud killed and restarted


@pytest.fixture
def own_cloud(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry, images: dict[str, OciImage]
) -> Iterator[CloudProcess]:
    """A cloud this test may kill, serving the session's images; restarted on the same port."""
    cloud = CloudProcess(tmp_path_factory.mktemp("own-cloud"), registry.url)
    state = cloud.state
    for name, image in images.items():
        state.add_blobs(name, image.blobs)
    state.close()
    cloud.start()
    yield cloud
    cloud.stop()


def test_cloud_killed_and_restarted_while_the_unit_reports(
    unit: str,
    own_cloud: CloudProcess,
    images: dict[str, OciImage],
    docker_runtime: DockerRuntime,
    tmp_path: Path,
) -> None:
    """Statuses the unit makes while its cloud is dead wait in the outbox and reach the cloud,
    in order, once it is back; the cloud's restart forgets nothing it had recorded."""
    proxy, url = cloud_link(own_cloud)
    agents = Agents(own_cloud, tmp_path)
    try:
        ds = scenario([("svc-a", images["it-alpha"]), ("svc-b", images["it-beta"])])
        _, log, data_dir = agents.start(unit, cloud_url=url)
        log.wait_for("link.up", component="communication")
        assert push(own_cloud, unit, ds)["ok"]
        log.wait_for("phase.entered", phase="launching", timeout_s=CONVERGE_S)

        port = urlsplit(own_cloud.ws_url).port
        assert own_cloud.process is not None
        kill(own_cloud.process)
        own_cloud.process = None
        killed_at = time.time()
        before = recorded(own_cloud, unit)
        # The cycle goes on without the cloud and ends with a full status, which waits.
        wait_until("the cycle ending", lambda: cycle_phase(data_dir) == "none", CONVERGE_S)
        last = log.wait_for("status.full", reason="cycle ended in none", timeout_s=10)
        wait_until("the last status queued", lambda: last["seq"] in queued_statuses(data_dir), 10)
        waiting = queued_statuses(data_dir)
        assert waiting, "statuses made while the cloud was dead wait in the outbox"

        own_cloud.extra = (*own_cloud.extra, "--port", str(port))
        own_cloud.start()
        assert wait_converged(unit, ds, own_cloud, data_dir, docker_runtime, CONVERGE_S).ok
        records = all_recorded(own_cloud, unit, made(log))
        assert_nothing_lost(records, made(log))
        assert records[: len(before)] == before, "the restarted cloud kept its timeline"
        late = {r["unitStatus"]["seq"]: r["receivedAt"] for r in records[len(before) :]}
        assert set(waiting) <= set(late), "every waiting status arrived after the restart"
        assert min(late.values()) > killed_at
    finally:
        agents.stop_all()
        proxy.stop()


# latency


@pytest.mark.parametrize(
    "latency_s",
    [
        1.5,
        pytest.param(30.0, marks=[pytest.mark.slow, pytest.mark.timeout(1200)], id="cellular"),
    ],
)
def test_a_link_with_latency_each_way_stays_up_and_converges(
    latency_s: float,
    unit: str,
    link: tuple[LinkProxy, str],
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    docker_runtime: DockerRuntime,
) -> None:
    """With the keepalive raised above the round trip, as `--keepalive`'s help says, a unit
    behind a slow link connects, and the link is never mistaken for a dead one: one connection
    for the whole update (the desired status, the blob URLs, every status and ack each way),
    every status recorded once (the resends an ack's late arrival causes are recorded once),
    and the unit converges. The latency is there from the first byte, handshake included.
    """
    proxy, url = link
    keepalive = 2 * latency_s + 5
    timeout = CONVERGE_S + 12 * latency_s
    proxy.set_latency(latency_s, latency_s)
    _, log, data_dir = agents.start(unit, cloud_url=url, extra=("--keepalive", str(keepalive)))
    log.wait_for("link.up", component="communication", timeout_s=4 * latency_s + 30)

    ds = scenario([("svc-a", images["it-alpha"])])
    answer = push(cloud, unit, ds, timeout_s=4 * latency_s + 30)
    assert answer["ok"], answer
    result = wait_converged(unit, ds, cloud, data_dir, docker_runtime, timeout)
    assert result.ok, result.problems
    records = all_recorded(cloud, unit, made(log), timeout_s=4 * latency_s + 10)
    assert_nothing_lost(records, made(log))
    assert proxy.stats().accepted == 1, f"the link was dropped and dialled again: {proxy.stats()}"
    assert not log.find("link.down"), "no dead link detected on a slow one"
    assert len(log.find("desired.stored")) == 1


# a connection reset in the middle of a status frame


def test_a_status_frame_cut_in_the_middle_arrives_once_after_the_reconnect(
    unit: str,
    link: tuple[LinkProxy, str],
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    docker_runtime: DockerRuntime,
) -> None:
    """A connection reset part-way through a status frame: the cloud never saw that status, so
    the unit sends it again on the next connection, and the cloud records it once."""
    proxy, url = link
    first = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    _, log, data_dir = agents.start(unit, cloud_url=url)
    log.wait_for("link.up", component="communication")
    assert push(cloud, unit, first)["ok"]
    assert wait_converged(unit, first, cloud, data_dir, docker_runtime, CONVERGE_S).ok
    time.sleep(1.0)  # the debounced delta of the last change went out
    settled = len(made(log))

    # The push's ack has gone up when push() returns; the next frame up is the first status of
    # the new cycle (a delta after the debounce, or the full one at its end). Statuses are
    # compressed (permessage-deflate) to a few dozen bytes, so the cut comes CUT_BYTES in: past
    # the frame header, before its end.
    second = scenario([("svc-a", images["it-alpha"])], num_instances=2)
    assert push(cloud, unit, second)["ok"]
    proxy.cut_after(CUT_BYTES, "up")
    assert proxy.wait_for(lambda s: s.resets >= 1, CONVERGE_S), "the cut happened"
    cut_at = time.time()
    result = wait_converged(unit, second, cloud, data_dir, docker_runtime, CONVERGE_S)
    assert result.ok, result.problems

    records = all_recorded(cloud, unit, made(log))
    assert_nothing_lost(records, made(log))
    cut_seq = made(log)[settled]
    cut = [r for r in records if r["unitStatus"]["seq"] == cut_seq]
    assert len(cut) == 1 and cut[0]["receivedAt"] > cut_at, "it arrived once, after the reset"
    assert proxy.stats().accepted == 2, "one reconnect"


# duplicated and reordered desired statuses


def test_duplicated_and_reordered_desired_statuses_keep_the_newest(
    unit: str,
    link: tuple[LinkProxy, str],
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    docker_runtime: DockerRuntime,
) -> None:
    """The newest desired status (the cloud's seq) stays in force whatever the link does to the
    others: an older one delivered late is acked and ignored, a copy of the newest (the cloud
    sends its stored one again on each connection) changes nothing."""
    proxy, url = link
    first = scenario([("svc-a", images["it-alpha"])], num_instances=1)
    second = scenario([("svc-b", images["it-beta"])], num_instances=1)
    third = scenario([("svc-a", images["it-alpha"])], num_instances=2)
    _, log, data_dir = agents.start(unit, cloud_url=url)
    log.wait_for("link.up", component="communication")
    assert push(cloud, unit, first)["ok"]
    assert push(cloud, unit, second)["ok"]
    assert push(cloud, unit, third)["ok"]
    assert wait_converged(unit, third, cloud, data_dir, docker_runtime, CONVERGE_S).ok
    cycles = len(cycle_journal(data_dir))

    # Reordered: the second arrives once more, after the third.
    late = dump_frame(Envelope(new_header(unit), replace(second, seq=2))).decode()
    answer = operate(cloud, {"op": "raw", "unit": unit, "frame": late})
    assert answer.get("ok"), "a stale desired status is acked, or the cloud sends it for ever"
    log.wait_for("desired.stale", seq=2, in_force_seq=3)
    # Duplicated: the link drops, and on the new connection the cloud sends the third again.
    ignored = len(log.find("desired.ignored"))
    proxy.drop_all()
    wait_until(
        "a copy of the newest ignored", lambda: len(log.find("desired.ignored")) > ignored, 30
    )
    assert len(cycle_journal(data_dir)) == cycles, "no cycle for a stale or repeated one"
    result = wait_converged(unit, third, cloud, data_dir, docker_runtime, CONVERGE_S)
    assert result.ok, result.problems
    records = all_recorded(cloud, unit, made(log))
    assert_nothing_lost(records, made(log))


# the agent killed while its outbox holds statuses


def test_sigkill_with_statuses_in_the_outbox_loses_none(
    unit: str,
    link: tuple[LinkProxy, str],
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    docker_runtime: DockerRuntime,
) -> None:
    """Statuses made while the cloud is unreachable are committed; an agent killed with
    SIGKILL sends them, in order, from its next start."""
    proxy, url = link
    ds = scenario([("svc-a", images["it-alpha"])])
    proc, log, data_dir = agents.start(unit, cloud_url=url)
    log.wait_for("link.up", component="communication")
    assert push(cloud, unit, ds)["ok"]
    log.wait_for("phase.entered", phase="launching", timeout_s=CONVERGE_S)
    proxy.refuse(True)
    proxy.drop_all()
    wait_until("the cycle ending", lambda: cycle_phase(data_dir) == "none", CONVERGE_S)
    last = log.wait_for("status.full", reason="cycle ended in none", timeout_s=10)
    wait_until("the last status queued", lambda: last["seq"] in queued_statuses(data_dir), 10)

    kill(proc)
    waiting = queued_statuses(data_dir)
    assert len(waiting) >= 2, f"statuses wait in the outbox: {waiting}"
    before = {r["unitStatus"]["seq"] for r in recorded(cloud, unit)}
    assert not set(waiting) & before, "the cloud never saw them"

    _, log2, _ = agents.start(unit, cloud_url=url)
    log2.wait_for("outbox.loaded", timeout_s=30)
    proxy.refuse(False)
    result = wait_converged(unit, ds, cloud, data_dir, docker_runtime, CONVERGE_S)
    assert result.ok, result.problems
    records = all_recorded(cloud, unit, [*made(log), *made(log2)])
    assert_nothing_lost(records, [*made(log), *made(log2)])
    boots = [r["unitStatus"]["bootId"] for r in records]
    assert len(set(boots)) == 2
    first_of_new = boots.index(boots[-1])
    old = [r["unitStatus"]["seq"] for r in records[:first_of_new]]
    assert old[-len(waiting) :] == waiting, "the killed boot's statuses arrived first, in order"
    wait_until("the outbox emptied", lambda: not queued_statuses(data_dir), 10)
