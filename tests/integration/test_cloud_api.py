"""The reference cloud's operator HTTP API against a real `cloud serve`: a bearer token or 401,
a desired status the parser refuses is 400 with its JSON path and nothing is stored, units
and their timelines answer, a push reaches a connected unit with the next seq, publishing
over HTTP, and the `aoscore cloud units|push` commands over it."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from aoscore_py.cloud.oci import OciImage
from aoscore_py.powercut.testbed import CloudProcess, aoscore_cmd, scenario
from aoscore_py.protocol import (
    MAX_MESSAGE_BYTES,
    Ack,
    DesiredStatus,
    Envelope,
    UnitStatus,
    dump_frame,
    dump_message,
    new_header,
    parse_frame,
)

pytestmark = pytest.mark.integration

BOOT = str(uuid.uuid4())
BAD_DESIRED = b'{"messageType": "desiredStatus", "items": [{"item": {"id": "x"}}]}'


def _api(cloud: CloudProcess, token: str | None = "valid") -> httpx.Client:
    headers = {}
    if token == "valid":
        headers["Authorization"] = f"Bearer {cloud.operator_token}"
    elif token is not None:
        headers["Authorization"] = token
    return httpx.Client(base_url=cloud.operator_url, headers=headers, timeout=60, trust_env=False)


def _status(unit: str, seq: int, delta: bool = False) -> tuple[str, bytes | str]:
    header = new_header(unit)
    status = UnitStatus(is_delta_info=delta, boot_id=BOOT, seq=seq)
    return header.txn, dump_frame(Envelope(header, status))


@asynccontextmanager
async def _fake_unit(cloud: CloudProcess, unit: str) -> AsyncIterator[ClientConnection]:
    """A unit on the cloud's plain ws that has sent one full status (seq 1), acked."""
    async with connect(cloud.ws_url, proxy=None, open_timeout=10) as ws:
        txn, frame = _status(unit, 1)
        await ws.send(frame)
        ack = parse_frame(await asyncio.wait_for(ws.recv(), 10))
        assert isinstance(ack.data, Ack) and ack.header.txn == txn
        yield ws


def _unit_id() -> str:
    return f"api-{uuid.uuid4().hex[:8]}"


def _desired(images: dict[str, OciImage]) -> DesiredStatus:
    return scenario([("svc-api", images["it-alpha"])], num_instances=1)


class TestToken:
    @pytest.mark.parametrize("token", [None, "Bearer wrong", "Basic dXNlcjpwYXNz", "bearer"])
    def test_without_the_operator_token_every_request_is_401(
        self, cloud: CloudProcess, token: str | None
    ) -> None:
        with _api(cloud, token) as api:
            for method, path in [
                ("GET", "/units"),
                ("GET", "/units/u1/timeline"),
                ("PUT", "/units/u1/desired"),
                ("POST", "/images"),
                ("GET", "/no/such/route"),
            ]:
                answer = api.request(method, path, content=b"{}")
                assert answer.status_code == 401, (method, path)
                assert answer.headers["WWW-Authenticate"] == "Bearer"
                assert "operator.token" in answer.json()["error"]

    def test_the_token_file_is_private(self, cloud: CloudProcess) -> None:
        path = Path(cloud.endpoints["operatorToken"])
        assert path == cloud.cloud_dir / "operator.token"
        assert path.stat().st_mode & 0o777 == 0o600


class TestDesired:
    def test_a_bad_desired_status_is_400_with_the_parsers_path_and_is_not_stored(
        self, cloud: CloudProcess
    ) -> None:
        unit = _unit_id()
        with _api(cloud) as api:
            answer = api.put(f"/units/{unit}/desired", content=BAD_DESIRED)
            assert answer.status_code == 400
            body = answer.json()
            assert body["ok"] is False and body["path"] == "$.items[0].item.type"
            assert body["reason"] and body["path"] in body["error"]
            assert api.get(f"/units/{unit}/desired").status_code == 404
            not_json = api.put(f"/units/{unit}/desired", content=b"{not json")
            assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]
            unit_status = api.put(
                f"/units/{unit}/desired", content=b'{"messageType": "unitStatus"}'
            )
            assert unit_status.status_code == 400 and "desiredStatus" in unit_status.json()["error"]

    def test_a_bad_unit_id_or_timeout_is_400(self, cloud: CloudProcess) -> None:
        with _api(cloud) as api:
            assert api.put("/units/..bad/desired", content=b"{}").status_code == 400
            assert api.put("/units/u1/desired?timeout=-1", content=b"{}").status_code == 400

    def test_an_oversized_request_is_413_with_a_message(self, cloud: CloudProcess) -> None:
        with _api(cloud) as api:
            answer = api.put("/units/u1/desired", content=b" " * (MAX_MESSAGE_BYTES + 1))
        assert answer.status_code == 413
        assert "more than the cloud takes" in answer.json()["error"]

    def test_a_unit_not_connected_keeps_it_stored_with_the_next_seq(
        self, cloud: CloudProcess, images: dict[str, OciImage]
    ) -> None:
        unit = _unit_id()
        body = dump_message(_desired(images))
        with _api(cloud) as api:
            first = api.put(f"/units/{unit}/desired", params={"timeout": "0"}, content=body)
            second = api.put(f"/units/{unit}/desired", params={"timeout": "0"}, content=body)
            stored = api.get(f"/units/{unit}/desired").json()["desiredStatus"]
        assert first.status_code == second.status_code == 202
        assert first.json()["acked"] is False and first.json()["stored"] is True
        assert (first.json()["seq"], second.json()["seq"]) == (1, 2)
        assert stored["seq"] == 2

    async def test_a_push_reaches_a_connected_unit_and_its_ack_is_the_answer(
        self, cloud: CloudProcess, images: dict[str, OciImage]
    ) -> None:
        unit = _unit_id()
        async with _fake_unit(cloud, unit) as ws:

            async def put() -> httpx.Response:
                async with httpx.AsyncClient(
                    base_url=cloud.operator_url,
                    headers={"Authorization": f"Bearer {cloud.operator_token}"},
                    timeout=30,
                    trust_env=False,
                ) as api:
                    return await api.put(
                        f"/units/{unit}/desired",
                        params={"timeout": "10"},
                        content=dump_message(_desired(images)),
                    )

            answer = asyncio.create_task(put())
            received = parse_frame(await asyncio.wait_for(ws.recv(), 10))
            assert isinstance(received.data, DesiredStatus) and received.data.seq == 1
            assert received.data.certificate_chains  # the cloud adds its signing chain
            await ws.send(dump_frame(Envelope(new_header(unit, txn=received.header.txn), Ack())))
            response = await answer
        assert response.status_code == 200
        body = response.json()
        assert body["acked"] is True and body["seq"] == 1
        assert body["txn"] == received.header.txn


class TestUnits:
    async def test_units_and_a_timeline_answer_in_the_units_order(
        self, cloud: CloudProcess
    ) -> None:
        unit = _unit_id()
        async with _fake_unit(cloud, unit) as ws:
            for seq in (3, 2):  # 2 arrives late; nothing is missing once it did
                txn, frame = _status(unit, seq, delta=True)
                await ws.send(frame)
                assert parse_frame(await asyncio.wait_for(ws.recv(), 10)).header.txn == txn
            with _api(cloud) as api:
                units = {u["id"]: u for u in api.get("/units").json()["units"]}
                timeline = api.get(f"/units/{unit}/timeline").json()
        listed = units[unit]
        assert listed["connected"] is True and listed["health"] == "ok"
        assert listed["lastSeq"] == 2 and listed["statuses"] == 3 and listed["lastBootId"] == BOOT
        assert listed["view"]["seq"] == 3 and listed["lastSeen"] is not None
        assert [s["seq"] for s in timeline["statuses"]] == [1, 2, 3]
        assert [s["late"] for s in timeline["statuses"]] == [False, True, False]
        assert timeline["summary"] == {
            "statuses": 3,
            "boots": 1,
            "duplicates": 0,
            "late": 1,
            "missing": 0,
        }

    def test_a_unit_never_heard_of_has_no_timeline(self, cloud: CloudProcess) -> None:
        with _api(cloud) as api:
            answer = api.get(f"/units/{_unit_id()}/timeline")
        assert answer.status_code == 404 and "not known" in answer.json()["error"]

    async def test_a_disconnected_unit_is_listed_offline(self, cloud: CloudProcess) -> None:
        unit = _unit_id()
        async with _fake_unit(cloud, unit):
            pass
        with _api(cloud) as api:
            for _ in range(100):
                listed = {u["id"]: u for u in api.get("/units").json()["units"]}[unit]
                if not listed["connected"]:
                    break
                await asyncio.sleep(0.05)
        assert listed["connected"] is False and listed["health"] == "offline"


class TestImages:
    def test_publish_over_http_adds_the_blobs_to_the_catalog(self, cloud: CloudProcess) -> None:
        with _api(cloud) as api:
            answer = api.post("/images", json={"name": "api-image", "ramLimit": 64 << 20})
            assert answer.status_code == 201, answer.text
            digest = answer.json()["indexDigest"]
            assert digest.startswith("sha256:") and digest in cloud.state.catalog()
            refused = api.post("/images", json={"name": "Bad_Name"})
            assert refused.status_code == 400 and "name" in refused.json()["error"]
            unknown = api.post("/images", json={"name": "x", "colour": "red"})
            assert unknown.status_code == 400 and "colour" in unknown.json()["error"]


class TestCommandLine:
    def _aoscore(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(aoscore_cmd(*args), capture_output=True, text=True, timeout=60)

    async def test_cloud_units_lists_a_connected_unit(self, cloud: CloudProcess) -> None:
        unit = _unit_id()
        async with _fake_unit(cloud, unit):
            proc = await asyncio.to_thread(
                self._aoscore, "cloud", "units", "--json", "--cloud-dir", str(cloud.cloud_dir)
            )
            text = await asyncio.to_thread(
                self._aoscore, "cloud", "units", "--cloud-dir", str(cloud.cloud_dir)
            )
        assert proc.returncode == 0, proc.stderr
        listed: dict[str, Any] = {u["id"]: u for u in orjson.loads(proc.stdout)}
        assert listed[unit]["connected"] is True
        assert f"{unit} online health=ok lastSeq=1" in text.stdout

    def test_cloud_push_to_an_absent_unit_exits_1_saying_it_stays_stored(
        self, cloud: CloudProcess, images: dict[str, OciImage], tmp_path: Path
    ) -> None:
        path = tmp_path / "ds.json"
        path.write_bytes(dump_message(_desired(images)))
        unit = _unit_id()
        proc = self._aoscore(
            *("cloud", "push", "--unit", unit, str(path), "--timeout", "0.5"),
            *("--cloud-dir", str(cloud.cloud_dir)),
        )
        assert proc.returncode == 1
        assert "stays stored" in proc.stderr and "Traceback" not in proc.stderr
