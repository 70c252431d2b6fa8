"""A cloud in an httpx transport: the real registrar and CA behind provisioning, and a scripted
discovery, so identity and discovery are tested without sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from aoscore_py.cloud.ca import ensure_ca
from aoscore_py.cloud.provisioning import DB_FILE, Registrar
from aoscore_py.errors import ProvisioningError

DISCOVERY_URL = "https://cloud.test/discovery"


@dataclass
class StubCloud:
    """Answers POST /provisioning with the real registrar, and POST /discovery with
    `discovery` (a status and a body), recording every request."""

    root: Path
    discovery: Callable[[dict[str, Any]], tuple[int, Any]] = lambda _body: (
        200,
        {"connectionInfo": ["wss://cloud.test:1"], "authToken": "t1", "nextRequestDelay": 60000},
    )
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    registrar: Registrar = field(init=False)

    def __post_init__(self) -> None:
        self.registrar = Registrar(self.root / DB_FILE, ensure_ca(self.root / "tls"))

    def token(self) -> str:
        return self.registrar.new_tokens()[0]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self._handle)

    def paths(self) -> list[str]:
        return [path for path, _ in self.requests]

    def _handle(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        self.requests.append((request.url.path, body))
        if request.url.path == "/provisioning":
            try:
                unit = self.registrar.provision(body["token"], body["csr"])
            except ProvisioningError as exc:
                return httpx.Response(403, json={"error": exc.message})
            return httpx.Response(
                200,
                json={
                    "systemId": unit.system_id,
                    "certificate": unit.certificate_pem,
                    "ca": unit.ca_pem,
                },
            )
        status, answer = self.discovery(body)
        return httpx.Response(status, json=answer)
