"""Provisioning, discovery and the wss handshake against a real `aoscore cloud serve` with TLS.

The unit side runs in the test (the identity and discovery modules, and websockets' client
with the targets discovery gives), the cloud as its own process; `aoscore agent` is run for
the refusals, which end before the agent starts.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from aoscore_py.cloud.ca import ensure_ca
from aoscore_py.cm.communication.discovery import Discovery, discovery_source
from aoscore_py.cm.communication.targets import Target
from aoscore_py.errors import CertificateError
from aoscore_py.iam.identity import identity_dir, load_identity
from aoscore_py.powercut.testbed import CloudProcess, Process, aoscore_cmd, operate
from aoscore_py.protocol import Envelope, UnitStatus, dump_frame, new_header, parse_frame

pytestmark = pytest.mark.integration

NO_REGISTRY = "http://127.0.0.1:1"  # nothing here publishes or fetches blobs


def _tls_cloud(folder: Path, *extra: str) -> CloudProcess:
    return CloudProcess(folder, NO_REGISTRY, tls=True, extra=extra).start()


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudProcess]:
    running = _tls_cloud(tmp_path_factory.mktemp("tls-cloud"))
    yield running
    running.stop()


def _tokens(cloud: CloudProcess, count: int = 1) -> list[str]:
    out = subprocess.run(
        aoscore_cmd(
            "cloud", "token", "new", "--count", str(count), "--cloud-dir", str(cloud.cloud_dir)
        ),
        capture_output=True,
        text=True,
        check=True,
    )
    tokens = out.stdout.split()
    assert len(tokens) == count
    return tokens


def _ca(cloud: CloudProcess) -> Path:
    return Path(cloud.endpoints["cloudCa"])


async def _unit(cloud: CloudProcess, data_dir: Path, token: str | None) -> tuple[str, Discovery]:
    return await discovery_source(
        data_dir,
        discovery_url=cloud.endpoints["discovery"],
        provision_token=token,
        cloud_ca=_ca(cloud),
    )


def _connect(
    target: Target, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None
):
    return connect(
        target.url,
        additional_headers=dict(target.headers if headers is None else headers),
        ssl=context or target.ssl_context,
        proxy=None,
        open_timeout=10,
    )


def _status_frame(system_id: str) -> tuple[str, str]:
    header = new_header(system_id)
    frame = dump_frame(Envelope(header, UnitStatus(is_delta_info=True)))
    return header.txn, frame.decode() if isinstance(frame, bytes) else frame


class TestProvisioning:
    async def test_first_start_provisions_and_later_starts_need_no_token(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        (token,) = _tokens(cloud)
        system_id, _ = await _unit(cloud, tmp_path, token)
        folder = identity_dir(tmp_path)
        assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
        assert (folder / "system_id").read_text().strip() == system_id
        again, discovery = await _unit(cloud, tmp_path, None)
        assert again == system_id
        assert discovery.url == cloud.endpoints["discovery"]
        stored, _ = await discovery_source(tmp_path, discovery_url=None, cloud_ca=_ca(cloud))
        assert stored == system_id  # the discovery URL was remembered

    async def test_a_unit_that_lost_its_identity_becomes_a_new_unit(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        first_token, second_token = _tokens(cloud, 2)
        first, _ = await _unit(cloud, tmp_path, first_token)
        shutil.rmtree(identity_dir(tmp_path))
        second, _ = await _unit(cloud, tmp_path, second_token)
        assert second != first

    def test_the_agent_refuses_wrong_and_used_tokens_with_exit_1(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        (token,) = _tokens(cloud)
        asyncio.run(_unit(cloud, tmp_path / "first", token))
        for name, given, reason in (
            ("wrong", "not-a-token", "not known"),
            ("used", token, "used already"),
        ):
            result = self._agent(cloud, tmp_path / name, "--provision-token", given)
            assert result.returncode == 1, result.stderr
            assert "refused to provision" in result.stderr and reason in result.stderr
            assert load_identity(tmp_path / name) is None

    def test_the_agent_without_identity_or_token_says_how_to_provision(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        result = self._agent(cloud, tmp_path / "none")
        assert result.returncode == 2
        assert "--provision-token" in result.stderr

    @staticmethod
    def _agent(cloud: CloudProcess, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "AOSCORE_PROVISION_TOKEN"}
        return subprocess.run(
            aoscore_cmd(
                "agent",
                "--discovery",
                cloud.endpoints["discovery"],
                "--cloud-ca",
                str(_ca(cloud)),
                "--data-dir",
                str(data_dir),
                *extra,
            ),
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    async def test_many_units_provision_and_connect_at_once(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        tokens = _tokens(cloud, 20)
        units = await asyncio.gather(
            *(_unit(cloud, tmp_path / f"u{i}", t) for i, t in enumerate(tokens))
        )
        assert len({system_id for system_id, _ in units}) == 20

        async def dial(discovery: Discovery) -> None:
            (target,) = await discovery.targets()
            async with _connect(target):
                pass

        await asyncio.gather(*(dial(d) for _, d in units))


def _connected(cloud: CloudProcess, system_id: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        units = operate(cloud, {"op": "units"}).get("units", [])
        if any(u["id"] == system_id and u["connected"] for u in units):
            return True
        time.sleep(0.2)
    return False


def test_the_agent_provisions_once_and_dials_through_discovery(
    cloud: CloudProcess, tmp_path: Path
) -> None:
    """`aoscore agent` with a token: provisioned, connected over wss; restarted without token
    or --discovery: the same unit, connected again."""
    (token,) = _tokens(cloud)
    args = (
        "--data-dir",
        str(tmp_path / "data"),
        "--cloud-ca",
        str(_ca(cloud)),
        *("--no-local-sm", "--insecure", "--sm-listen", "127.0.0.1:0"),
    )
    first = Process(
        aoscore_cmd("agent", "--discovery", cloud.endpoints["discovery"], *args),
        tmp_path / "agent-1.log",
        env={"AOSCORE_PROVISION_TOKEN": token},
    )
    try:
        deadline = time.monotonic() + 30
        while (identity := load_identity(tmp_path / "data")) is None:
            assert first.proc.poll() is None and time.monotonic() < deadline, first.output()
            time.sleep(0.1)
        assert _connected(cloud, identity.system_id), first.output()
    finally:
        first.stop()
    second = Process(
        aoscore_cmd("agent", *args), tmp_path / "agent-2.log", unset=["AOSCORE_PROVISION_TOKEN"]
    )
    try:
        assert "identity.provisioned" not in second.output()
        deadline = time.monotonic() + 30
        while "link.up" not in second.output():
            assert second.proc.poll() is None and time.monotonic() < deadline, second.output()
            time.sleep(0.1)
        assert f"system_id={identity.system_id}" in second.output()
        assert _connected(cloud, identity.system_id)
    finally:
        second.stop()


class TestDiscovery:
    async def test_discovery_answers_wss_urls_and_a_token(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        _, discovery = await _unit(cloud, tmp_path, _tokens(cloud)[0])
        (target,) = await discovery.targets()
        assert target.url == cloud.endpoints["wss"] and target.url.startswith("wss://")
        assert target.headers["Authorization"].startswith("Bearer ")

    async def test_discovery_needs_the_units_own_certificate(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        a, discovery = await _unit(cloud, tmp_path / "a", _tokens(cloud)[0])
        b, _ = await _unit(cloud, tmp_path / "b", _tokens(cloud)[0])
        url = cloud.endpoints["discovery"]
        body = {"version": 7, "systemId": a, "supportedProtocols": ["wss"]}
        no_cert = ssl.create_default_context(cafile=str(_ca(cloud)))
        async with httpx.AsyncClient(verify=no_cert, trust_env=False) as client:
            assert (await client.post(url, json=body)).status_code == 401
        async with httpx.AsyncClient(verify=discovery.ssl_context, trust_env=False) as client:
            other = await client.post(url, json={**body, "systemId": b})
        assert other.status_code == 403 and a in other.json()["error"]

    async def test_a_cloud_certificate_that_does_not_verify_is_told_apart(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        await _unit(cloud, tmp_path / "unit", _tokens(cloud)[0])
        identity = load_identity(tmp_path / "unit")
        assert identity is not None
        stranger = ensure_ca(tmp_path / "stranger")
        (identity.folder / "ca.pem").write_bytes(stranger.ca_pem())
        discovery = Discovery(cloud.endpoints["discovery"], identity)
        with pytest.raises(CertificateError, match="did not verify"):
            await discovery.targets()


class TestHandshake:
    async def test_with_certificate_and_token_the_unit_is_served(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        system_id, discovery = await _unit(cloud, tmp_path, _tokens(cloud)[0])
        (target,) = await discovery.targets()
        async with _connect(target) as ws:
            _, foreign = _status_frame("unit-someone-else")
            txn, own = _status_frame(system_id)
            await ws.send(foreign)  # dropped: the handshake proved who this is
            await ws.send(own)
            ack = parse_frame(await asyncio.wait_for(ws.recv(), 10))
        assert ack.header.txn == txn and ack.header.system_id == system_id
        assert [r["txn"] for r in cloud.state.timeline(system_id)] == [txn]
        assert cloud.state.timeline("unit-someone-else") == []

    @pytest.mark.parametrize(
        "authorization",
        [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer "],
    )
    async def test_without_a_valid_bearer_the_handshake_gets_401(
        self, cloud: CloudProcess, tmp_path: Path, authorization: str | None
    ) -> None:
        _, discovery = await _unit(cloud, tmp_path, _tokens(cloud)[0])
        (target,) = await discovery.targets()
        headers = {} if authorization is None else {"Authorization": authorization}
        with pytest.raises(InvalidStatus) as caught:
            async with _connect(target, headers):
                pass
        assert caught.value.response.status_code == 401

    async def test_another_units_token_gets_401(self, cloud: CloudProcess, tmp_path: Path) -> None:
        _, a = await _unit(cloud, tmp_path / "a", _tokens(cloud)[0])
        _, b = await _unit(cloud, tmp_path / "b", _tokens(cloud)[0])
        (target_a,) = await a.targets()
        (target_b,) = await b.targets()
        with pytest.raises(InvalidStatus) as caught:
            async with _connect(target_a, dict(target_b.headers)):
                pass
        assert caught.value.response.status_code == 401
        a.unauthorized(target_a)  # what the link does on a 401: discovery runs again
        (fresh,) = await a.targets()
        async with _connect(fresh):
            pass

    async def test_without_a_client_certificate_the_handshake_fails(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        _, discovery = await _unit(cloud, tmp_path, _tokens(cloud)[0])
        (target,) = await discovery.targets()
        no_cert = ssl.create_default_context(cafile=str(_ca(cloud)))
        # TLS 1.3 checks the client's certificate after the client's side of the handshake:
        # the client sees the connection end where the HTTP answer should be, never a 101.
        with pytest.raises((OSError, InvalidMessage)):
            async with _connect(target, context=no_cert):
                pass

    async def test_units_do_not_dial_the_operator_api(self, cloud: CloudProcess) -> None:
        plain = cloud.endpoints["operator"].replace("http://", "ws://", 1)
        assert "ws" not in cloud.endpoints  # over TLS, no plain listener for units
        with pytest.raises(InvalidStatus) as caught:
            async with connect(plain, proxy=None, open_timeout=10):
                pass
        assert caught.value.response.status_code == 401


def test_an_expired_token_gets_401(tmp_path: Path) -> None:
    cloud = _tls_cloud(tmp_path / "cloud", "--token-ttl", "1")
    try:
        (token,) = _tokens(cloud)

        async def scenario() -> None:
            _, discovery = await _unit(cloud, tmp_path / "unit", token)
            (target,) = await discovery.targets()
            deadline = time.monotonic() + 10
            while True:  # expires within 2 s (whole seconds): no fixed sleep
                try:
                    async with _connect(target):
                        pass
                except InvalidStatus as exc:
                    assert exc.response.status_code == 401
                    break
                assert time.monotonic() < deadline, "the token never expired"
                await asyncio.sleep(0.2)
            discovery.unauthorized(target)  # as the link does on a 401
            (fresh,) = await discovery.targets()
            assert fresh.headers != target.headers
            async with _connect(fresh):
                pass

        asyncio.run(scenario())
        endpoints = orjson.loads((cloud.cloud_dir / "cloud.json").read_bytes())
        assert "ws" not in endpoints  # units have no plain way in
    finally:
        cloud.stop()


def _operator(cloud: CloudProcess) -> httpx.Client:
    headers = {"Authorization": f"Bearer {cloud.operator_token}"}
    return httpx.Client(base_url=cloud.operator_url, headers=headers, timeout=60, trust_env=False)


class TestOperators:
    def test_a_push_to_a_unit_never_provisioned_is_refused_and_nothing_stored(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        path = tmp_path / "ds.json"
        path.write_bytes(b'{"messageType": "desiredStatus"}')
        proc = subprocess.run(
            aoscore_cmd(
                *("cloud", "push", "--unit", "unit-nope", str(path), "--timeout", "0.5"),
                *("--cloud-dir", str(cloud.cloud_dir)),
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 1, proc.stderr
        assert "no such unit: unit-nope (not provisioned)" in proc.stderr
        assert "Traceback" not in proc.stderr
        with _operator(cloud) as api:
            answer = api.put("/units/unit-nope/desired", content=path.read_bytes())
            listed = [u["id"] for u in api.get("/units").json()["units"]]
        assert answer.status_code == 404 and "not provisioned" in answer.json()["error"]
        assert cloud.state.desired("unit-nope") is None and "unit-nope" not in listed

    async def test_a_push_to_a_provisioned_unit_is_stored(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        system_id, _ = await _unit(cloud, tmp_path, _tokens(cloud)[0])
        headers = {"Authorization": f"Bearer {cloud.operator_token}"}
        async with httpx.AsyncClient(
            base_url=cloud.operator_url, headers=headers, timeout=60, trust_env=False
        ) as api:
            answer = await api.put(
                f"/units/{system_id}/desired",
                content=b'{"messageType": "desiredStatus"}',
                params={"timeout": "0"},
            )
        assert answer.status_code == 202, answer.text
        assert answer.json()["seq"] == 1

    async def test_a_unit_that_polls_is_listed_online_by_poll_and_its_last_seen_moves(
        self, cloud: CloudProcess, tmp_path: Path
    ) -> None:
        system_id, discovery = await _unit(cloud, tmp_path, _tokens(cloud)[0])
        (target,) = await discovery.targets()
        base = cloud.endpoints["https"]
        _, frame = _status_frame(system_id)
        headers = {"Authorization": target.headers["Authorization"]}
        operator = {"Authorization": f"Bearer {cloud.operator_token}"}
        async with (
            httpx.AsyncClient(
                verify=discovery.ssl_context, headers=headers, trust_env=False, timeout=30
            ) as unit,
            httpx.AsyncClient(
                base_url=cloud.operator_url, headers=operator, trust_env=False, timeout=30
            ) as api,
        ):
            posted = await unit.post(
                f"{base}/units/{system_id}/messages", content=f"[{frame}]".encode()
            )
            assert posted.status_code == 200, posted.text

            async def listed() -> dict:
                units = (await api.get("/units")).json()["units"]
                return {u["id"]: u for u in units}[system_id]

            first = await listed()
            assert first["connected"] is True and first["transport"] == "poll"
            assert first["health"] != "offline"
            await asyncio.sleep(0.05)
            polled = await unit.get(f"{base}/units/{system_id}/desired")
            assert polled.status_code == 404  # nothing pushed: still a poll, still seen
            second = await listed()
        assert second["lastSeen"] > first["lastSeen"]
        assert second["statuses"] == 1  # a poll is seen, not recorded
        proc = await asyncio.to_thread(
            subprocess.run,
            aoscore_cmd("cloud", "units", "--cloud-dir", str(cloud.cloud_dir)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        line = next(li for li in proc.stdout.splitlines() if li.startswith(system_id))
        assert f"{system_id} online " in line and "transport=poll" in line
        assert "None" not in proc.stdout


def _serve(cloud_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """`cloud serve` expected to end by itself (a refusal)."""
    return subprocess.run(
        aoscore_cmd(
            *("cloud", "serve", "--cloud-dir", str(cloud_dir), "--registry", NO_REGISTRY),
            *extra,
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_restart_serves_on_the_ports_units_know(tmp_path: Path) -> None:
    """Left at 0, a restart takes the ports of the last start (a provisioned unit's discovery
    URL still works); an explicit port wins and is kept; a kept port that is taken exits 1
    naming it and the option that chooses another."""
    folder = tmp_path / "cloud"
    first = _tls_cloud(folder)
    endpoints = dict(first.endpoints)
    first.stop()
    again = _tls_cloud(folder)
    try:
        assert again.endpoints["discovery"] == endpoints["discovery"]
        assert again.endpoints["wss"] == endpoints["wss"]
    finally:
        again.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        explicit = probe.getsockname()[1]
    moved = _tls_cloud(folder, "--https-port", str(explicit))
    try:
        assert moved.endpoints["discovery"] == f"https://127.0.0.1:{explicit}/discovery"
        assert moved.endpoints["wss"] == endpoints["wss"]
    finally:
        moved.stop()
    with socket.create_server(("127.0.0.1", explicit)):
        taken = _serve(folder)
    assert taken.returncode == 1, taken.stderr
    assert f"https port {explicit}" in taken.stderr and "--https-port" in taken.stderr
    assert "Traceback" not in taken.stderr
