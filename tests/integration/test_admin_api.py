"""The local admin API and `aoscore status` against a real agent, through its real Unix socket
(and its loopback port): the token, the read endpoints after a real convergence, the OpenAPI
document, the metrics, and the socket removed at a clean stop."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aoscore_py.admin.auth import TOKEN_FILE
from aoscore_py.admin.listen import SOCKET_FILE
from aoscore_py.admin.routes import ROUTES
from aoscore_py.cloud.oci import OciImage
from aoscore_py.powercut.testbed import CloudProcess, aoscore_cmd, push, scenario, wait_converged
from aoscore_py.sm.docker_runtime import DockerRuntime

from .conftest import Agents

pytestmark = pytest.mark.integration


def aoscore(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(aoscore_cmd(*args), capture_output=True, text=True, timeout=timeout)


def admin(data_dir: Path, token: str | None) -> httpx.Client:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(data_dir / SOCKET_FILE)),
        base_url="http://admin",
        headers=headers,
        timeout=10,
    )


def get(client: httpx.Client, path: str) -> Any:
    response = client.get(path)
    assert response.status_code == 200, (path, response.text)
    return response.json()


def test_admin_api_reads_the_converged_unit(
    agents: Agents,
    cloud: CloudProcess,
    images: dict[str, OciImage],
    unit: str,
    docker_runtime: DockerRuntime,
) -> None:
    ds = scenario([("svc-a", images["it-alpha"])], num_instances=2)
    proc, log, data_dir = agents.start(unit, extra=("--admin-listen", "127.0.0.1:0"))
    started = log.wait_for("admin.started")
    log.wait_for("link.up")
    assert push(cloud, unit, ds)["ok"]
    result = wait_converged(unit, ds, cloud, data_dir, docker_runtime)
    assert result.ok, result.problems

    # The token and the socket are the agent user's only.
    token_file, sock = data_dir / TOKEN_FILE, data_dir / SOCKET_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert started["socket"] == str(sock)

    # No token, or a wrong one: 401 on every route.
    for bad in (None, "wrong-" + token, token[:-1]):
        with admin(data_dir, bad) as client:
            for route in ROUTES:
                assert client.get(route.path).status_code == 401, (bad, route.path)

    with admin(data_dir, token) as client:
        cycle = get(client, "/cycle?journal=50")
        items = get(client, "/items")
        nodes = get(client, "/nodes")
        link = get(client, "/link")
        doc = get(client, "/openapi.json")
        metrics_text = client.get("/metrics").text
        assert client.get("/cycle?journal=x").status_code == 400

    # The cycle ended where the store says, its journal the store's.
    assert cycle["phase"] == "none" and not cycle["running"] and cycle["failure"] is None
    assert [r["to"] for r in cycle["journal"]][-7:] == [
        "downloading",
        "pending",
        "installing",
        "launching",
        "waitingActive",
        "finalizing",
        "none",
    ]
    assert [(i["id"], i["version"], i["state"]) for i in items["items"]] == [
        ("svc-a", "1.0.0", "installed")
    ]
    assert items["downloads"] == []
    (node,) = nodes["nodes"]
    assert node["id"] == "node-1" and node["state"] == "provisioned" and node["connected"]
    assert sorted((i["item"], i["instance"], i["state"]) for i in node["instances"]) == [
        ("svc-a", 0, "active"),
        ("svc-a", 1, "active"),
    ]
    assert link["health"] == "online" and link["connected"]
    assert link["publishMode"] in ("direct", "recovering")
    assert link["url"] == cloud.ws_url

    # The document lists every route.
    assert {(r.method.lower(), r.path) for r in ROUTES} == {
        (m, p) for p, ops in doc["paths"].items() for m in ops
    }

    # The metrics parse and count the cycle.
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics_text)
        for s in family.samples
    }
    assert samples[("aoscore_cycles_total", (("outcome", "succeeded"),))] == 1.0
    assert samples[("aoscore_cycle_phase", (("phase", "none"),))] == 1.0
    assert samples[("aoscore_link_health", (("health", "online"),))] == 1.0
    assert samples[("aoscore_downloaded_bytes_total", ())] > 0
    assert samples[("aoscore_phase_duration_seconds_count", (("phase", "downloading"),))] == 1.0
    assert ("aoscore_outbox_depth", ()) in samples

    # `aoscore status --json` prints the same state; the plain summary names it.
    out = aoscore("status", "--json", "--data-dir", str(data_dir))
    assert out.returncode == 0, out.stderr
    status = orjson.loads(out.stdout)
    assert status["cycle"]["phase"] == "none"
    assert status["cycle"]["journal"][-1] == cycle["journal"][-1]
    assert status["items"]["items"] == items["items"]
    assert [
        (n["id"], n["state"], sorted(orjson.dumps(i) for i in n["instances"]))
        for n in status["nodes"]["nodes"]
    ] == [(node["id"], node["state"], sorted(orjson.dumps(i) for i in node["instances"]))]
    assert status["link"]["health"] == "online"
    plain = aoscore("status", "--data-dir", str(data_dir))
    assert plain.returncode == 0, plain.stderr
    assert "cycle: none" in plain.stdout and "svc-a 1.0.0 installed" in plain.stdout
    assert "node-1 provisioned" in plain.stdout and "link: online" in plain.stdout

    # The loopback port serves the same API behind the same token.
    port = int(str(started["listen"]).rsplit(":", 1)[1])
    assert port > 0
    url = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{url}/link", timeout=10).status_code == 401
    over_tcp = aoscore("status", "--json", "--admin", url, "--data-dir", str(data_dir))
    assert over_tcp.returncode == 0, over_tcp.stderr
    assert orjson.loads(over_tcp.stdout)["items"]["items"] == items["items"]

    # A clean stop removes the socket; then no agent answers: exit 1, a clear message.
    assert proc.stop() == 0
    assert not sock.exists()
    gone = aoscore("status", "--data-dir", str(data_dir))
    assert gone.returncode == 1
    assert "no agent answers" in gone.stderr and "Traceback" not in gone.stderr


@pytest.mark.parametrize("address", ["0.0.0.0:8095", "192.0.2.1:8095"])
def test_a_non_loopback_admin_address_is_refused(tmp_path: Path, address: str) -> None:
    out = aoscore(
        *("agent", "--cloud", "ws://127.0.0.1:1", "--system-id", "u"),
        *("--data-dir", str(tmp_path / "data"), "--admin-listen", address),
    )
    assert out.returncode == 2
    assert "only a loopback address" in out.stderr and "no TLS" in out.stderr
    assert not (tmp_path / "data").exists()


def test_status_usage_errors_exit_2(tmp_path: Path) -> None:
    out = aoscore("status", "--admin", "https://127.0.0.1:1", "--data-dir", str(tmp_path))
    assert out.returncode == 2 and "http://HOST:PORT" in out.stderr
    out = aoscore("status", "--data-dir", str(tmp_path))
    assert out.returncode == 1 and "no admin token" in out.stderr


def test_no_admin_serves_nothing(agents: Agents, unit: str) -> None:
    proc, log, data_dir = agents.start(unit, extra=("--no-admin",))
    log.wait_for("link.up")
    assert not log.find("admin.started")
    assert not (data_dir / SOCKET_FILE).exists() and not (data_dir / TOKEN_FILE).exists()
    assert proc.stop() == 0


def test_retry_runs_a_failed_cycle_again(agents: Agents, cloud: CloudProcess, unit: str) -> None:
    # An item the cloud never published: its blobs cannot be had, so the cycle fails.
    missing = OciImage("never-published", "sha256:" + "0" * 64, {})
    ds = scenario([("svc-missing", missing)], num_instances=1)
    _, log, data_dir = agents.start(unit)
    log.wait_for("link.up")
    assert push(cloud, unit, ds)["ok"]
    log.wait_for("cycle.ended", timeout_s=30)
    token = (data_dir / TOKEN_FILE).read_text().strip()
    with admin(data_dir, token) as client:
        failed = get(client, "/cycle")
        assert failed["phase"] == "none" and failed["failure"] in ("transient", "permanent")
        assert failed["failedItems"] == ["svc-missing"]
        mark = len(log.records())
        answer = client.post("/retry")
        assert answer.status_code == 202, answer.text
        assert answer.json()["retrying"] is True
        log.wait_for("cycle.ended", after=mark, timeout_s=30)
        again = get(client, "/cycle?journal=100")
        metrics = client.get("/metrics").text
    starts = [r["note"] for r in again["journal"] if r["event"] == "start"]
    assert starts[-1] == "retry asked by an operator", starts
    assert again["phase"] == "none" and again["failedItems"] == ["svc-missing"]
    failed_cycles = [
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "aoscore_cycles_total" and s.labels == {"outcome": "failed"}
    ]
    assert failed_cycles and failed_cycles[0] >= 2
