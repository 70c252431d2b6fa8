"""The reference cloud's WebSocket server: units on `/`, operators on `/operator`.

Units: every message is acknowledged by txn; every unitStatus is appended to the unit's
timeline; requestBlobUrls is answered with URLs into the loopback registry, each blob signed by
the test PKI; after a unit's first status on a connection, its stored desired status is sent
(the unit ignores one it already has). Every desired status pushed carries the PKI's
certificates and chain. Operators: JSON requests `{"op": "push", "unit": ..., "desiredStatus":
{...}}`, answered with the unit's ack or nack; `{"op": "units"}`; `{"op": "blobs", ...}` to
serve blobs unsigned, with a wrong signature, through another base URL (a test proxy) or
behind a dead first URL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import ssl
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from ..crypto.pki import Pki
from ..crypto.signing import parse_alg
from ..errors import ConfigError, ProtocolError
from ..logs import get_logger
from ..protocol import (
    MAX_MESSAGE_BYTES,
    Ack,
    BlobUrlInfo,
    BlobUrls,
    DesiredStatus,
    Envelope,
    Nack,
    RequestBlobUrls,
    SignInfo,
    UnitStatus,
    dump_frame,
    dump_message,
    new_header,
    parse_frame,
    parse_message,
)
from .oci import blob_url, blob_urls
from .ordering import RecentTxns
from .state import EXTRA_HASHES, CloudState, check_unit_id, read_timeline

log = get_logger("cloud")

SIGNING_MODES = ("valid", "unsigned", "wrong")
# Nothing listens on port 1 of loopback: a URL that fails at once, for tests of URL fallback.
DEAD_BASE = "http://127.0.0.1:1"

# Decides at the handshake who a unit dialling over wss is: its system id, or the HTTP answer
# that refuses it (401: no valid bearer token for the certificate it presented).
Authenticator = Callable[[ServerConnection, Request], str | Response]


@dataclass(frozen=True)
class BlobServing:
    """How requestBlobUrls is answered: normally, or with a fault to test units against."""

    signing: str = "valid"
    alg: str | None = None
    base: str | None = None
    dead_first: bool = False

    def __post_init__(self) -> None:
        if self.signing not in SIGNING_MODES:
            raise ConfigError(f"signing {self.signing!r}: use one of {', '.join(SIGNING_MODES)}")
        if self.alg is not None:
            parse_alg(self.alg)
        if self.base is not None and not self.base.startswith(("http://", "https://")):
            raise ConfigError(f"base {self.base!r} is not an http(s) URL")

    @classmethod
    def from_request(cls, request: dict[str, Any]) -> BlobServing:
        return cls(
            signing=str(request.get("signing", "valid")),
            alg=request.get("alg"),
            base=request.get("base"),
            dead_first=bool(request.get("deadFirst", False)),
        )

    def describe(self) -> dict[str, Any]:
        return {
            "signing": self.signing,
            "alg": self.alg,
            "base": self.base,
            "deadFirst": self.dead_first,
        }


@dataclass
class _Unit:
    """A connected unit."""

    ws: ServerConnection
    waiters: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_reply: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    sent_desired: bool = False


class CloudServer:
    """The reference cloud.

    Args:
        state: its files.
        registry: the registry URL blobs are served from.
        blob_urls_delay_s: wait this long before answering requestBlobUrls (a slow cloud).
    """

    def __init__(
        self,
        state: CloudState,
        registry: str,
        *,
        pki: Pki | None = None,
        serving: BlobServing | None = None,
        blob_urls_delay_s: float = 0.0,
    ) -> None:
        self.state = state
        self.registry = registry.rstrip("/")
        self.pki = pki
        self.serving = serving or BlobServing()
        self.blob_urls_delay_s = blob_urls_delay_s
        self._units: dict[str, _Unit] = {}
        self._recent: dict[str, RecentTxns] = {}
        self._connected: dict[str, asyncio.Event] = {}
        self._servers: list[Server] = []
        # The system id each wss connection proved at its handshake.
        self._verified: dict[ServerConnection, str] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, units: bool = True) -> int:
        """Listen in plaintext; returns the port.

        Args:
            units: serve units on `/` too; False when units dial over wss
                (`start_units_tls`), leaving this listener to operators on loopback.
        """
        server = await serve(
            self._route,
            host,
            port,
            max_size=MAX_MESSAGE_BYTES,
            process_request=None if units else self._operators_only,
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def start_units_tls(
        self, host: str, port: int, context: ssl.SSLContext, authenticate: Authenticator
    ) -> int:
        """Serve units over wss: `context` demands a client certificate from the cloud's CA,
        `authenticate` checks the bearer token against it; returns the port."""

        def admit(connection: ServerConnection, request: Request) -> Response | None:
            verdict = authenticate(connection, request)
            if isinstance(verdict, Response):
                return verdict
            self._verified[connection] = verdict
            return None

        server = await serve(
            self._verified_unit,
            host,
            port,
            ssl=context,
            process_request=admit,
            max_size=MAX_MESSAGE_BYTES,
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()

    @staticmethod
    def _operators_only(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/operator"):
            return None
        return connection.respond(HTTPStatus.FORBIDDEN, "units connect over wss\n")

    async def _verified_unit(self, ws: ServerConnection) -> None:
        try:
            await self._unit(ws, self._verified.get(ws))
        finally:
            self._verified.pop(ws, None)

    def _event(self, unit_id: str) -> asyncio.Event:
        return self._connected.setdefault(unit_id, asyncio.Event())

    async def _route(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else "/"
        if path.startswith("/operator"):
            await self._operator(ws)
        else:
            await self._unit(ws)

    # units

    async def _send(self, unit_id: str, unit: _Unit, message: Any, txn: str | None = None) -> str:
        header = new_header(unit_id, txn=txn)
        await unit.ws.send(dump_frame(Envelope(header, message)))
        return header.txn

    async def _unit(self, ws: ServerConnection, verified: str | None = None) -> None:
        """Serve one unit connection; `verified` is the system id its handshake proved (wss),
        and frames naming another unit are dropped."""
        unit_id: str | None = None
        unit: _Unit | None = None
        try:
            async for raw in ws:
                try:
                    env = parse_frame(raw)
                    check_unit_id(env.header.system_id)
                except (ProtocolError, ConfigError) as exc:
                    log.warning("unit.bad_frame", unit=unit_id, error=str(exc))
                    continue
                if verified is not None and env.header.system_id != verified:
                    log.warning("unit.foreign_frame", unit=verified, claimed=env.header.system_id)
                    continue
                if unit is None or env.header.system_id != unit_id:
                    unit_id = env.header.system_id
                    unit = _Unit(ws)
                    self._units[unit_id] = unit
                    self._event(unit_id).set()
                    log.info("unit.connected", unit=unit_id, remote=str(ws.remote_address))
                await self._unit_message(unit_id, unit, env, raw)
        except ConnectionClosed:
            pass
        finally:
            if unit_id is not None and self._units.get(unit_id) is unit:
                del self._units[unit_id]
                self._event(unit_id).clear()
                log.info("unit.disconnected", unit=unit_id)
            if unit is not None:
                for waiter in unit.waiters.values():
                    if not waiter.done():
                        waiter.set_result({"ok": False, "error": "unit disconnected"})

    async def _unit_message(
        self, unit_id: str, unit: _Unit, env: Envelope, raw: str | bytes
    ) -> None:
        data, txn = env.data, env.header.txn
        if isinstance(data, (Ack, Nack)):
            waiter = unit.waiters.pop(txn, None)
            result: dict[str, Any] = {"ok": isinstance(data, Ack), "txn": txn}
            if isinstance(data, Nack):
                result["nack"] = {"retryAfter": data.retry_after}
                if data.error_info is not None:
                    result["error"] = data.error_info.message
                    result["aosCode"] = data.error_info.aos_code
            for w in [waiter, *unit.next_reply]:
                if w is not None and not w.done():
                    w.set_result(result)
            unit.next_reply.clear()
            return
        if isinstance(data, UnitStatus) and not self._seen(unit_id).add(txn):
            # A resend whose ack was lost: acked again, recorded once.
            log.info("unit.status_again", unit=unit_id, txn=txn, seq=data.seq)
        elif isinstance(data, UnitStatus):
            self.state.append_status(unit_id, txn, orjson.loads(raw)["data"])
        await self._send(unit_id, unit, Ack(), txn=txn)
        if isinstance(data, UnitStatus):
            log.info("unit.status", unit=unit_id, delta=data.is_delta_info, seq=data.seq)
            if not unit.sent_desired:
                unit.sent_desired = True
                if self.state.desired(unit_id) is not None:
                    self._spawn(self.deliver(unit_id, timeout_s=30.0))
        elif isinstance(data, RequestBlobUrls):
            self._spawn(self._answer_blob_urls(unit_id, unit, data))

    def _seen(self, unit_id: str) -> RecentTxns:
        """The txns of the unit's last recorded statuses (read from its timeline once)."""
        seen = self._recent.get(unit_id)
        if seen is None:
            seen = RecentTxns.of_timeline(read_timeline(self.state.timeline_path(unit_id)))
            self._recent[unit_id] = seen
        return seen

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_blob_urls(self, unit_id: str, unit: _Unit, req: RequestBlobUrls) -> None:
        if self.blob_urls_delay_s:
            await asyncio.sleep(self.blob_urls_delay_s)
        catalog = self.state.catalog()
        items = []
        for digest in req.digests:
            entry = catalog.get(digest)
            if entry is None:
                log.warning("blob.unknown", unit=unit_id, digest=digest)
                continue
            items.append(self._blob_info(digest, entry))
        try:
            await self._send(unit_id, unit, BlobUrls(req.correlation_id, tuple(items)))
        except ConnectionClosed:
            return
        log.info("blob_urls.sent", unit=unit_id, asked=len(req.digests), known=len(items))

    def _blob_info(self, digest: str, entry: dict[str, Any]) -> BlobUrlInfo:
        serving = self.serving
        urls = blob_urls(serving.base or self.registry, entry, digest)
        if serving.dead_first:
            urls = (blob_url(DEAD_BASE, entry["repository"], digest), *urls)
        sha256 = bytes.fromhex(digest.split(":", 1)[1])
        return BlobUrlInfo(
            digest=digest,
            urls=urls,
            sha256=sha256,
            size=entry["size"],
            sign_info=self._sign(digest, sha256, entry),
        )

    def _sign(self, digest: str, sha256: bytes, entry: dict[str, Any]) -> SignInfo | None:
        if self.pki is None or self.serving.signing == "unsigned":
            return None
        hashes = {"sha256": sha256}
        hashes.update({n: bytes.fromhex(entry[n]) for n in EXTRA_HASHES if n in entry})
        if self.serving.signing == "wrong":
            # A well-formed signature by the right key, over other bytes.
            hashes = {n: hashlib.new(n, b"not " + digest.encode()).digest() for n in hashes}
        return self.pki.sign(hashes, alg=self.serving.alg)

    def with_trust(self, ds: DesiredStatus) -> DesiredStatus:
        """`ds` with the PKI's certificates and chain added (those it has are kept)."""
        if self.pki is None:
            return ds
        have = {c.fingerprint.upper() for c in ds.certificates}
        certificates = ds.certificates + tuple(
            c for c in self.pki.certificates() if c.fingerprint.upper() not in have
        )
        chain = self.pki.chain()
        chains = ds.certificate_chains
        if all(c.name != chain.name for c in chains):
            chains = (*chains, chain)
        return dataclasses.replace(ds, certificates=certificates, certificate_chains=chains)

    async def deliver(self, unit_id: str, timeout_s: float) -> dict[str, Any]:
        """Send the unit its stored desired status once it is connected; wait for its answer."""
        body = self.state.desired(unit_id)
        if body is None:
            return {"ok": False, "error": f"no desired status for unit {unit_id}"}
        message = parse_message(body, message_type="desiredStatus")
        if isinstance(message, DesiredStatus):
            message = self.with_trust(message)
        deadline = time.monotonic() + timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self._event(unit_id).wait()
                unit = self._units[unit_id]
                waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                txn = str(uuid.uuid4())
                unit.waiters[txn] = waiter
                await self._send(unit_id, unit, message, txn)
                log.info("desired.sent", unit=unit_id, txn=txn)
                return await waiter
        except (TimeoutError, ConnectionClosed, KeyError):
            waited = round(timeout_s - max(0.0, deadline - time.monotonic()), 1)
            return {
                "ok": False,
                "error": f"unit {unit_id} did not answer within {waited} s; "
                "the desired status stays stored and is sent when it connects",
            }

    async def _raw(self, unit_id: str, frame: str, timeout_s: float) -> dict[str, Any]:
        """Send `frame` as it is (for testing units with bad input); return the unit's next
        ack or nack, whatever its txn."""
        unit = self._units.get(unit_id)
        if unit is None:
            return {"ok": False, "error": f"unit {unit_id} is not connected"}
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        unit.next_reply.append(waiter)
        await unit.ws.send(frame)
        try:
            async with asyncio.timeout(timeout_s):
                return await waiter
        except TimeoutError:
            return {"ok": False, "error": f"no ack or nack within {timeout_s} s"}

    # operators

    async def _operator(self, ws: ServerConnection) -> None:
        async for raw in ws:
            try:
                request = orjson.loads(raw)
                reply = await self._operate(request)
            except (orjson.JSONDecodeError, ProtocolError, ConfigError, KeyError, TypeError) as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            await ws.send(orjson.dumps(reply))

    def _next_seq(self, unit_id: str) -> int:
        """The per-unit order stamped on each desired status pushed (one more than the last)."""
        body = self.state.desired(unit_id)
        if body is None:
            return 1
        try:
            last = parse_message(body, message_type="desiredStatus")
        except ProtocolError:
            return 1
        return ((last.seq if isinstance(last, DesiredStatus) else None) or 0) + 1

    async def _operate(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "push":
            unit_id = check_unit_id(request["unit"])
            ds = parse_message(orjson.dumps(request["desiredStatus"]), message_type="desiredStatus")
            if not isinstance(ds, DesiredStatus):
                return {"ok": False, "error": f"expected a desiredStatus, got {ds.MESSAGE_TYPE}"}
            ds = replace(ds, seq=self._next_seq(unit_id))
            self.state.save_desired(unit_id, dump_message(ds))
            return await self.deliver(unit_id, float(request.get("timeout", 30.0)))
        if op == "raw":
            return await self._raw(
                check_unit_id(request["unit"]),
                str(request["frame"]),
                float(request.get("timeout", 10.0)),
            )
        if op == "blobs":
            if len(request) > 1:
                self.serving = BlobServing.from_request(request)
                log.info("blobs.serving", **self.serving.describe())
            return {"ok": True, "serving": self.serving.describe()}
        if op == "units":
            return {"ok": True, "units": {u: u in self._units for u in self.state.units()}}
        return {"ok": False, "error": f"unknown op {op!r}"}
