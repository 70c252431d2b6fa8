"""The route table, its OpenAPI document, and the token check in front of every route."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from aoscore_py.admin.routes import ROUTES, openapi_document
from aoscore_py.admin.server import AdminServer, make_app
from aoscore_py.errors import AosError

TOKEN = "t0ken-t0ken-t0ken-t0ken-t0ken"


def test_every_registered_route_is_in_the_document() -> None:
    app = make_app(object(), TOKEN)  # type: ignore[arg-type]
    registered = {
        (r.method.lower(), r.resource.canonical)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None
    }
    paths = openapi_document()["paths"]
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert registered == documented
    assert {("get", "/cycle"), ("get", "/metrics"), ("get", "/openapi.json")} <= documented


def test_every_operation_says_401_and_what_it_answers() -> None:
    doc = openapi_document()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for ops in doc["paths"].values():
        for op in ops.values():
            assert "401" in op["responses"]
            assert {"200", "202"} & set(op["responses"])
            assert op["summary"]


def test_paths_are_unique() -> None:
    keys = [(r.method, r.path) for r in ROUTES]
    assert len(keys) == len(set(keys))


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = make_app(object(), TOKEN)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as c:
        yield c


@pytest.mark.parametrize(
    ("method", "path"), [(r.method, r.path) for r in ROUTES] + [("GET", "/nothing-here")]
)
@pytest.mark.parametrize(
    "header", [None, "Bearer wrong-wrong-wrong-wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]
)
async def test_every_path_needs_the_token(
    client: TestClient[Any, Any], method: str, path: str, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await client.request(method, path, headers=headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "bearer token" in (await response.json())["error"]


async def test_the_document_is_served_with_the_token(client: TestClient[Any, Any]) -> None:
    response = await client.get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    assert await response.json() == openapi_document()


class StubHandler:
    """The desired status handler as `/retry` sees it, with memory of the retries asked."""

    def __init__(self, *, idle: bool = True, desired: object = "ds", accepts: bool = True) -> None:
        self.idle = idle
        self.desired = desired
        self.accepts = accepts
        self.retries = 0
        self.machine = SimpleNamespace(phase="none")

    async def retry(self) -> bool:
        self.retries += 1
        if self.accepts:
            self.machine.phase = "downloading"
        return self.accepts


async def post_retry(handler: StubHandler) -> tuple[int, dict[str, Any]]:
    app = make_app(SimpleNamespace(handler=handler), TOKEN)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as c:
        response = await c.post("/retry", headers={"Authorization": f"Bearer {TOKEN}"})
        return response.status, await response.json()


class TestRetry:
    async def test_a_resting_cycle_is_run_again(self) -> None:
        handler = StubHandler()
        assert await post_retry(handler) == (202, {"retrying": True, "phase": "downloading"})
        assert handler.retries == 1

    @pytest.mark.parametrize(
        ("handler", "why"),
        [
            (StubHandler(idle=False), "a cycle is running"),
            (StubHandler(desired=None), "no desired status is stored"),
            (StubHandler(accepts=False), "could not be restarted"),
        ],
    )
    async def test_refused_with_409_saying_why(self, handler: StubHandler, why: str) -> None:
        status, body = await post_retry(handler)
        assert status == 409 and why in body["error"]


async def test_a_taken_port_fails_the_start_and_leaves_no_socket(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = AdminServer(
            make_app(object(), TOKEN),  # type: ignore[arg-type]
            tmp_path / "admin.sock",
            ("127.0.0.1", port),
        )
        with pytest.raises(AosError, match=f"cannot listen on 127.0.0.1:{port}"):
            await server.start()
    assert not (tmp_path / "admin.sock").exists()


async def test_the_socket_answers_and_is_removed_at_stop(tmp_path: Path) -> None:
    server = AdminServer(make_app(object(), TOKEN), tmp_path / "admin.sock")  # type: ignore[arg-type]
    await server.start()
    try:
        assert (tmp_path / "admin.sock").exists()
    finally:
        await server.stop()
    assert not (tmp_path / "admin.sock").exists()
