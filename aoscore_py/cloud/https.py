"""The reference cloud over TLS: HTTPS provisioning and discovery, and units on wss.

- `POST /provisioning` `{"token", "csr"}` -> `{"systemId", "certificate", "ca"}` (PEM); a
  wrong or used token is 403 with `{"error": reason}`, a bad CSR 400. No client certificate
  is needed: the unit has none yet; the token is its credential.
- `POST /discovery` (PROTOCOL.md, "Connection") needs the unit's client certificate, whose
  system id must be the one asked for, and answers the wss URL with a bearer token.
- wss: a client certificate from the cloud's CA and `Authorization: Bearer <token>` issued
  for that same unit, or the handshake is answered 401.
- Polling, the units' fallback transport (`cm/communication/poll.py`), with the same
  credentials as wss (401 without; 403 when the certificate is another unit's than the path's):
  `POST /units/{systemId}/messages` takes a JSON array of frames and answers a JSON array of
  the cloud's reply frames (acks, blobUrls); `GET /units/{systemId}/desired` answers the whole
  desired-status frame with an `ETag`, 304 for a matching `If-None-Match`, 404 when the unit
  has none. Served over TLS only (`cloud serve --insecure` has no HTTPS listener).

The TLS server context asks every HTTPS client for a certificate but does not demand one
(provisioning has none), so discovery checks for it itself; the wss context demands one.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from ..errors import LocalError, ProtocolError, ProvisioningError
from ..iam.tls import TlsFiles, server_context
from ..logs import get_logger
from ..protocol import MAX_MESSAGE_BYTES
from .bearer import BearerTokens, load_key
from .ca import ensure_ca
from .provisioning import DB_FILE, Registrar
from .server import CloudServer
from .state import CloudState

log = get_logger("cloud.https")

TLS_DIR = "tls"
PROTOCOL_VERSION = 7
# A unit runs discovery again when this share of its token's life has passed, so it holds a
# valid token whenever it redials.
_REDISCOVER_AT = 0.8


@dataclass(frozen=True)
class TlsSettings:
    """How the cloud serves over TLS.

    Args:
        host: the address the HTTPS and wss listeners bind.
        names: the names (DNS or addresses) units reach the cloud by; the first is put in the
            URLs the cloud advertises. Loopback names are always in the certificate.
        https_port: the HTTPS port (0: the one kept from the last start, else a free one).
        wss_port: the wss port (0: the one kept from the last start, else a free one).
        token_ttl_s: how long a discovery token opens the wss endpoint.
        cert_days: how long a unit certificate is valid.
    """

    host: str = "127.0.0.1"
    names: tuple[str, ...] = ()
    https_port: int = 0
    wss_port: int = 0
    token_ttl_s: float = 3600.0
    cert_days: int = 365

    def public_name(self) -> str:
        if self.names:
            return self.names[0]
        return "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host

    def server_names(self) -> list[str]:
        names = [self.public_name(), *self.names]
        if self.host not in ("", "0.0.0.0", "::"):
            names.append(self.host)
        return list(dict.fromkeys([*names, "localhost", "127.0.0.1", "::1"]))


@dataclass(frozen=True)
class PortChoice:
    """Where one TLS listener binds: a port given, one kept from an earlier start (units
    provisioned then know it), or 0 (a free one, kept from then on)."""

    listener: str  # "https" or "wss", as in its option's name
    port: int
    kept: bool = False

    def refusal(self, host: str, reason: str) -> str:
        """Why `cloud serve` cannot listen on it, and how to choose another."""
        option = f"--{self.listener}-port"
        if self.kept:
            return (
                f"the {self.listener} port {self.port} kept from an earlier start (units "
                f"provisioned here dial it) is taken on {host}: {reason}; stop what holds it, "
                f"or choose another with {option} PORT"
            )
        return f"cannot listen on {host}:{self.port} ({option}): {reason}"


def choose_port(listener: str, given: int, kept: dict[str, int]) -> PortChoice:
    """The port a listener binds: the one given wins, else the kept one, else a free one."""
    if given:
        return PortChoice(listener, given)
    if listener in kept:
        return PortChoice(listener, kept[listener], kept=True)
    return PortChoice(listener, 0)


def _url_host(name: str) -> str:
    return f"[{name}]" if ":" in name else name


def peer_system_id(transport: Any) -> str | None:
    """The common name of the verified client certificate on `transport` (a unit's system id),
    or None when the client presented none."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def _error(status: HTTPStatus, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _lower_keys(body: Any) -> dict[str, Any]:
    """The request's fields with keys lower-cased (AosCore matches them case-insensitively)."""
    if not isinstance(body, dict):
        raise ValueError("the body is not a JSON object")
    return {str(k).lower(): v for k, v in body.items() if v is not None}


class Front:
    """The TLS side of one cloud: its CA, registrar, tokens, HTTPS app and wss listener.

    Args:
        state: the cloud's files (the CA lives in `tls/`, tokens and units in `cloud.db`).
        server: the cloud whose unit handler the wss listener feeds.
        settings: where and how to listen.
    """

    def __init__(self, state: CloudState, server: CloudServer, settings: TlsSettings) -> None:
        self.state = state
        self.server = server
        self.settings = settings
        folder = state.root / TLS_DIR
        self.ca = ensure_ca(folder)
        self.registrar = Registrar(state.root / DB_FILE, self.ca, cert_days=settings.cert_days)
        self.tokens = BearerTokens(load_key(folder), settings.token_ttl_s)
        self.wss_url = ""
        self._runner: web.AppRunner | None = None

    def _contexts(self, files: TlsFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(HTTPS: a client certificate asked for, wss: demanded), both from the cloud's CA."""
        https = server_context(files.cert, files.key, client_ca=files.ca)
        https.verify_mode = ssl.CERT_OPTIONAL
        return https, server_context(files.cert, files.key, client_ca=files.ca)

    async def start(self) -> dict[str, Any]:
        """Listen; returns the endpoints to add to cloud.json."""
        files = self.ca.issue_server(self.settings.server_names())
        https_context, wss_context = self._contexts(files)
        host, public = self.settings.host, _url_host(self.settings.public_name())
        kept = self.state.kept_ports()
        wss = choose_port("wss", self.settings.wss_port, kept)
        https = choose_port("https", self.settings.https_port, kept)
        try:
            wss_port = await self.server.start_units_tls(
                host, wss.port, wss_context, self.authenticate
            )
        except OSError as exc:
            raise LocalError(wss.refusal(host, exc.strerror or str(exc))) from None
        try:
            sock = socket.create_server((host, https.port), family=_family(host))
        except OSError as exc:
            raise LocalError(https.refusal(host, exc.strerror or str(exc))) from None
        https_port = int(sock.getsockname()[1])
        self.state.keep_ports({"https": https_port, "wss": wss_port})
        log.info("tls.ports", https=https_port, wss=wss_port, kept=https.kept or wss.kept)
        self.wss_url = f"wss://{public}:{wss_port}"
        app = web.Application(client_max_size=64 << 10)
        app.router.add_post("/provisioning", self._provisioning)
        app.router.add_post("/discovery", self._discovery)
        app.router.add_post("/units/{unit}/messages", self._messages)
        app.router.add_get("/units/{unit}/desired", self._desired)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, ssl_context=https_context).start()
        base = f"https://{public}:{https_port}"
        log.info("tls.serving", https=base, wss=self.wss_url, ca=str(self.ca.ca_path))
        return {
            "https": base,
            "provisioning": f"{base}/provisioning",
            "discovery": f"{base}/discovery",
            "wss": self.wss_url,
            "cloudCa": str(self.ca.ca_path),
        }

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        self.registrar.close()

    # provisioning and discovery

    async def _provisioning(self, request: web.Request) -> web.Response:
        try:
            body = _lower_keys(await request.json())
            token, csr = body["token"], body["csr"]
            if not isinstance(token, str) or not isinstance(csr, str):
                raise ValueError("token and csr must be strings")
        except (ValueError, KeyError) as exc:
            return _error(HTTPStatus.BAD_REQUEST, f"expected {{token, csr}}: {exc}")
        try:
            unit = self.registrar.provision(token, csr)
        except ProvisioningError as exc:
            log.warning("provisioning.refused", remote=request.remote, reason=exc.message)
            return _error(HTTPStatus.FORBIDDEN, exc.message)
        except ValueError as exc:
            return _error(HTTPStatus.BAD_REQUEST, str(exc))
        return web.json_response(
            {"systemId": unit.system_id, "certificate": unit.certificate_pem, "ca": unit.ca_pem}
        )

    async def _discovery(self, request: web.Request) -> web.Response:
        proved = peer_system_id(request.transport)
        if proved is None:
            return _error(HTTPStatus.UNAUTHORIZED, "discovery needs the unit's client certificate")
        try:
            body = _lower_keys(await request.json())
            version, asked = body["version"], body["systemid"]
            protocols = body.get("supportedprotocols", ["wss"])
        except (ValueError, KeyError) as exc:
            return _error(HTTPStatus.BAD_REQUEST, f"expected {{version, systemId}}: {exc}")
        if version != PROTOCOL_VERSION:
            return _error(HTTPStatus.BAD_REQUEST, f"version {version!r}: this cloud speaks 7")
        if asked != proved:
            return _error(
                HTTPStatus.FORBIDDEN, f"the certificate is unit {proved}'s, not {asked!r}'s"
            )
        if not isinstance(protocols, list) or "wss" not in protocols:
            return _error(HTTPStatus.BAD_REQUEST, "this cloud offers wss only")
        if not self.registrar.is_unit(proved):
            return _error(HTTPStatus.FORBIDDEN, f"unit {proved} is not provisioned here")
        delay_ms = int(self.settings.token_ttl_s * _REDISCOVER_AT * 1000)
        log.info("discovery.answered", unit=proved, next_ms=delay_ms)
        return web.json_response(
            {
                "connectionInfo": [self.wss_url],
                "authToken": self.tokens.issue(proved),
                "nextRequestDelay": delay_ms,
            }
        )

    # polling

    def _polling_unit(self, request: web.Request) -> str | web.Response:
        """The unit a poll request is from, when its certificate, token and path agree."""
        proved = peer_system_id(request.transport)
        reason = self._refusal(proved, request.headers.get("Authorization", ""))
        if reason is not None:
            log.warning("unit.refused", unit=proved, reason=reason, transport="poll")
            return _error(HTTPStatus.UNAUTHORIZED, f"{reason}: run discovery")
        asked = request.match_info["unit"]
        if asked != proved:
            return _error(
                HTTPStatus.FORBIDDEN, f"the certificate is unit {proved}'s, not {asked!r}'s"
            )
        self.server.seen_by_poll(asked, desired=request.method == "GET")
        return str(proved)

    async def _messages(self, request: web.Request) -> web.Response:
        unit = self._polling_unit(request)
        if isinstance(unit, web.Response):
            return unit
        # Read here, past the credentials check and the app's small limit for strangers.
        body = await request.content.read(MAX_MESSAGE_BYTES + 1)
        if len(body) > MAX_MESSAGE_BYTES:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "send fewer frames at once")
        try:
            frames = orjson.loads(body)
            if not isinstance(frames, list):
                raise ValueError("the body is not a JSON array")
        except (ValueError, orjson.JSONDecodeError) as exc:
            return _error(HTTPStatus.BAD_REQUEST, f"expected a JSON array of frames: {exc}")
        replies = await self.server.poll_messages(unit, [orjson.dumps(f) for f in frames])
        body = b"[" + b",".join(r.encode() if isinstance(r, str) else r for r in replies) + b"]"
        return web.Response(body=body, content_type="application/json")

    async def _desired(self, request: web.Request) -> web.Response:
        unit = self._polling_unit(request)
        if isinstance(unit, web.Response):
            return unit
        try:
            polled = self.server.poll_desired(unit)
        except ProtocolError as exc:
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"the stored desired status: {exc}")
        if polled is None:
            return _error(HTTPStatus.NOT_FOUND, f"no desired status for unit {unit}")
        headers = {"ETag": polled.etag, "Cache-Control": "no-cache"}
        if polled.etag in _etags(request.headers.get("If-None-Match", "")):
            return web.Response(status=HTTPStatus.NOT_MODIFIED, headers=headers)
        log.info("desired.served", unit=unit, txn=polled.txn, etag=polled.etag, transport="poll")
        return web.Response(body=polled.frame, content_type="application/json", headers=headers)

    # the wss handshake

    def _refusal(self, proved: str | None, authorization: str) -> str | None:
        """Why a unit's request is refused (401), or None when its certificate and bearer
        token agree."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip() if scheme.lower() == "bearer" else ""
        if proved is None:
            return "no client certificate"
        if not token:
            return "no bearer token"
        if self.tokens.check(token) != proved:
            return "the bearer token is not valid for this unit (expired or another's)"
        return None

    def authenticate(self, connection: ServerConnection, request: Request) -> str | Response:
        """The system id of a unit whose certificate and bearer token agree, or a 401."""
        proved = peer_system_id(connection.transport)
        reason = self._refusal(proved, request.headers.get("Authorization", ""))
        if reason is None and proved is not None:
            return proved
        log.warning("unit.refused", unit=proved, reason=reason)
        return connection.respond(HTTPStatus.UNAUTHORIZED, f"{reason}: run discovery\n")


def _etags(header: str) -> set[str]:
    """The ETags an `If-None-Match` names (weak ones compare as strong: the body is JSON)."""
    return {t.strip().removeprefix("W/") for t in header.split(",") if t.strip()}


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
