"""Polling, the fallback transport, against a real `aoscore cloud serve` with TLS and real
agents: a provisioned unit with `--transport poll` picks up a pushed desired status at its next
poll and converges (Docker), its statuses reach the timeline by POST with none missing, later
polls are answered 304, and after a restart the kept ETag still gives 304; with `--transport
auto` and the wss port unreachable, the unit falls back to polling after `--poll-after`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from aoscore_py.cloud.ordering import in_unit_order, summary
from aoscore_py.cloud.registry import Registry
from aoscore_py.cloud.service import publish
from aoscore_py.cm.communication.discovery import Discovery
from aoscore_py.iam.identity import Identity, load_identity
from aoscore_py.powercut.linkproxy import LinkProxy
from aoscore_py.powercut.testbed import (
    TEST_RECONNECT,
    AgentLog,
    CloudProcess,
    Process,
    aoscore_cmd,
    push,
    scenario,
    wait_converged,
)
from aoscore_py.protocol import DesiredStatus
from aoscore_py.sm.docker_runtime import DockerRuntime

pytestmark = pytest.mark.integration

NO_REGISTRY = "http://127.0.0.1:1"


@pytest.fixture(scope="module")
def tls_cloud(
    tmp_path_factory: pytest.TempPathFactory, registry: Registry
) -> Iterator[CloudProcess]:
    running = CloudProcess(tmp_path_factory.mktemp("poll-cloud"), registry.url, tls=True).start()
    yield running
    running.stop()


def _token(cloud: CloudProcess) -> str:
    out = subprocess.run(
        aoscore_cmd("cloud", "token", "new", "--cloud-dir", str(cloud.cloud_dir)),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _agent(
    cloud: CloudProcess,
    data_dir: Path,
    log_path: Path,
    *extra: str,
    discovery: str | None = None,
    token: str | None = None,
) -> Process:
    """`aoscore agent` through discovery (provisioned with `token` when given)."""
    args = aoscore_cmd(
        "agent",
        *("--discovery", discovery or cloud.endpoints["discovery"]),
        *("--cloud-ca", cloud.endpoints["cloudCa"]),
        *("--ca", str(cloud.trusted_ca)),
        *("--data-dir", str(data_dir)),
        *("--sm-listen", "127.0.0.1:0", "--status-debounce", "0.5", "--log-format", "json"),
        *TEST_RECONNECT,
        *extra,
    )
    env = {"AOSCORE_PROVISION_TOKEN": token} if token else None
    return Process(args, log_path, env=env, unset=() if token else ("AOSCORE_PROVISION_TOKEN",))


def _identity(proc: Process, data_dir: Path, timeout_s: float = 30.0) -> Identity:
    deadline = time.monotonic() + timeout_s
    while (identity := load_identity(data_dir)) is None:
        assert proc.proc.poll() is None and time.monotonic() < deadline, proc.output()
        time.sleep(0.1)
    return identity


def _timeline(cloud: CloudProcess, unit: str) -> dict[str, int]:
    return summary(in_unit_order(cloud.state.timeline(unit)))


def test_a_polling_unit_converges_and_its_etag_survives_a_restart(
    tls_cloud: CloudProcess,
    registry: Registry,
    docker_runtime: DockerRuntime,
    remove_unit: Callable[[str], str],
    tmp_path: Path,
) -> None:
    cloud = tls_cloud
    image = publish(cloud.cloud_dir, "poll-alpha", registry_url=registry.url)
    data_dir = tmp_path / "data"
    poll = ("--transport", "poll", "--poll-interval", "1")
    first = _agent(cloud, data_dir, tmp_path / "agent-1.log", *poll, token=_token(cloud))
    try:
        unit = remove_unit(_identity(first, data_dir).system_id)
        log = AgentLog(first.log_path)
        log.wait_for("link.transport", transport="poll")
        log.wait_for("link.up", transport="poll")
        assert not log.find("link.down"), "no WebSocket is dialled with --transport poll"

        ds = scenario([("svc-poll", image)], num_instances=1)
        answer = push(cloud, unit, ds, timeout_s=30)
        assert answer["ok"], answer  # the unit's ack came back by POST
        result = wait_converged(unit, ds, cloud, data_dir, docker_runtime)
        assert result.ok, result.problems

        (fetched,) = log.find("poll.desired")
        kept = log.wait_for("poll.etag_kept", txn=fetched["txn"])
        log.wait_for("poll.unchanged", etag=kept["etag"])  # the next poll: 304
        counts = _timeline(cloud, unit)
        assert counts["statuses"] >= 2 and counts["missing"] == 0, counts
    finally:
        assert first.stop() == 0, first.output()

    statuses = _timeline(cloud, unit)["statuses"]
    second = _agent(cloud, data_dir, tmp_path / "agent-2.log", *poll)
    try:
        log = AgentLog(second.log_path)
        log.wait_for("poll.unchanged", etag=kept["etag"])  # the kept ETag: 304 at once
        assert not log.find("poll.desired")
        deadline = time.monotonic() + 20
        while _timeline(cloud, unit)["statuses"] == statuses:  # the full status at link up
            assert time.monotonic() < deadline, second.output()
            time.sleep(0.1)
    finally:
        assert second.stop() == 0, second.output()
    counts = _timeline(cloud, unit)
    assert counts["boots"] == 2 and counts["missing"] == 0, counts


class TestEndpoints:
    """The poll endpoints at the protocol level, with a provisioned unit's credentials."""

    async def test_304_for_the_current_etag_and_credentials_are_checked(
        self, tls_cloud: CloudProcess, tmp_path: Path
    ) -> None:
        from aoscore_py.cm.communication.discovery import discovery_source
        from aoscore_py.powercut.testbed import save_desired

        unit, discovery = await discovery_source(
            tmp_path / "unit",
            discovery_url=tls_cloud.endpoints["discovery"],
            provision_token=_token(tls_cloud),
            cloud_ca=Path(tls_cloud.endpoints["cloudCa"]),
        )
        other, _ = await discovery_source(
            tmp_path / "other",
            discovery_url=tls_cloud.endpoints["discovery"],
            provision_token=_token(tls_cloud),
            cloud_ca=Path(tls_cloud.endpoints["cloudCa"]),
        )
        (target,) = await discovery.targets()
        base = tls_cloud.endpoints["https"]
        url = f"{base}/units/{unit}/desired"
        async with _client(discovery) as client:
            assert (await client.get(url, headers=target.headers)).status_code == 404
            save_desired(tls_cloud.state, unit, DesiredStatus(seq=1))
            first = await client.get(url, headers=target.headers)
            assert first.status_code == 200 and first.headers["ETag"]
            again = await client.get(
                url, headers={**target.headers, "If-None-Match": first.headers["ETag"]}
            )
            assert again.status_code == 304
            assert (await client.get(url)).status_code == 401
            foreign = await client.get(f"{base}/units/{other}/desired", headers=target.headers)
            assert foreign.status_code == 403
            posted = await client.post(
                f"{base}/units/{unit}/messages", content=b"[]", headers=target.headers
            )
            assert posted.status_code == 200 and posted.json() == []


def _client(discovery: Discovery) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=discovery.ssl_context, trust_env=False, timeout=10)


def test_auto_polls_while_wss_is_unreachable_and_stops_once_it_is_up(tmp_path: Path) -> None:
    """The cloud advertises its wss URL on 127.0.0.2, where a LinkProxy refusing every
    connection stands in front of it: the unit keeps dialling, polls after --poll-after, takes a
    push by poll, and stops polling once the proxy lets the WebSocket through."""
    proxy = LinkProxy("127.0.0.1", 0, host="127.0.0.2")
    proxy.refuse(True)
    port = proxy.start()
    proxy.core.upstream_port = port  # the cloud's wss port on 127.0.0.1: the same number
    cloud = CloudProcess(
        tmp_path / "cloud",
        NO_REGISTRY,
        tls=True,
        extra=("--name", "127.0.0.2", "--wss-port", str(port)),
    ).start()
    proc = None
    try:
        assert cloud.endpoints["wss"] == f"wss://127.0.0.2:{port}"
        discovery = cloud.endpoints["discovery"].replace("127.0.0.2", "127.0.0.1")
        data_dir = tmp_path / "data"
        proc = _agent(
            cloud,
            data_dir,
            tmp_path / "agent.log",
            *("--transport", "auto", "--poll-after", "2", "--poll-interval", "1"),
            *("--no-local-sm", "--insecure"),
            discovery=discovery,
            token=_token(cloud),
        )
        unit = _identity(proc, data_dir).system_id
        log = AgentLog(proc.log_path)
        log.wait_for("link.down")  # the WebSocket is tried first
        fallback = log.wait_for("link.fallback", timeout_s=30)
        assert fallback["since_ws_s"] >= 2
        log.wait_for("link.transport", transport="poll")
        _wait(lambda: _timeline(cloud, unit)["statuses"] > 0, proc)  # statuses by POST
        answer = push(cloud, unit, DesiredStatus(), timeout_s=20)
        assert answer["ok"], answer  # a push, taken by poll
        downs = len(log.find("link.down"))
        _wait(lambda: len(log.find("link.down")) > downs, proc)  # still redialling

        proxy.refuse(False)
        log.wait_for("link.transport", timeout_s=20, transport="ws", previous="poll")
        polls = len(log.find("poll.desired"))
        answer = push(cloud, unit, DesiredStatus(), timeout_s=20)  # a new seq: a new ETag
        assert answer["ok"], answer
        time.sleep(2.5)  # more than two poll intervals
        assert len(log.find("poll.desired")) == polls, "polling stopped: it came by push"
        assert _timeline(cloud, unit)["missing"] == 0
    finally:
        if proc is not None:
            assert proc.stop() == 0, proc.output()
        cloud.stop()
        proxy.stop()


def _wait(condition: Callable[[], bool], proc: Process, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert proc.proc.poll() is None and time.monotonic() < deadline, proc.output()
        time.sleep(0.1)
