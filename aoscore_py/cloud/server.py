"""The reference cloud's WebSocket server for units, and the operations its operator API
(`operator.py`) runs on them.

Units: every message is acknowledged by txn; every unitStatus is appended to the unit's
timeline; requestBlobUrls is answered with URLs into the loopback registry, each blob signed by
the test PKI; after a unit's first status on a connection, its stored desired status is sent
(the unit ignores one it already has). Every desired status pushed carries the PKI's
certificates and chain. Operations (`operate`): `{"op": "push", "unit": ..., "desiredStatus":
{...}}`, answered with the unit's ack or nack; `{"op": "units"}`; `{"op": "blobs", ...}` to
serve blobs unsigned, with a wrong signature, through another base URL (a test proxy) or
behind a dead first URL; `{"op": "raw", ...}` to send a unit a frame as it is.

Units that poll (over HTTPS, `https.py`) are served by the same handler: the frames of a POST
go through `_unit_message` with a `_Replies` in place of the WebSocket, and what the cloud
answers is the POST's answer (blobUrls included, answered inline). The desired status is
fetched with an ETag (a hash of the frame's data) under a txn derived from it, so the unit's
ack names it and a push waiting for that unit is answered by it.
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
from .state import EXTRA_HASHES, CloudState, check_unit_id
from .views import polled_recently

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


class _Replies:
    """Stands in for a polling unit's WebSocket: the frames sent to it answer its POST."""

    def __init__(self) -> None:
        self.frames: list[bytes | str] = []

    async def send(self, frame: bytes | str) -> None:
        self.frames.append(frame)


# Txns of desired statuses served by poll: one per (unit, ETag), the same at every poll.
_POLL_TXNS = uuid.UUID("6f1d3c2e-3b0a-4f57-9a55-5d2f0f6a9c11")


@dataclass(frozen=True)
class PolledDesired:
    """A unit's desired status as a poll serves it."""

    etag: str
    txn: str
    frame: bytes


@dataclass
class _PollSeen:
    """When a polling unit was last seen (wall time, as the fleet's lastSeen), in memory: a
    poll is no reason for a commit."""

    last: float
    last_desired: float | None = None
    interval_s: float | None = None  # between its last two GETs of its desired status


@dataclass(frozen=True)
class Presence:
    """How a unit is linked to this cloud now, for operators."""

    connected: bool  # holds a WebSocket, or polled recently
    transport: str | None  # "ws" or "poll": how it was last seen since this cloud started
    polled_at: float | None  # its last poll (wall time)


@dataclass
class _Unit:
    """A connected unit (or one that polls: its `ws` is a `_Replies`)."""

    ws: ServerConnection | _Replies
    waiters: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    next_reply: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    sent_desired: bool = False


class CloudServer:
    """The reference cloud.

    Args:
        state: its files.
        registry: the registry URL blobs are served from.
        blob_urls_delay_s: wait this long before answering requestBlobUrls (a slow cloud).
        keepalive_s: seconds between pings to each unit; one whose pong is this late again
            is dropped (raise it above the round trip of units on slow links).
    """

    def __init__(
        self,
        state: CloudState,
        registry: str,
        *,
        pki: Pki | None = None,
        serving: BlobServing | None = None,
        blob_urls_delay_s: float = 0.0,
        keepalive_s: float = 20.0,
    ) -> None:
        self.state = state
        # Pings to each unit, and how long an opening handshake may take (TCP, TLS and the
        # upgrade: a round trip each), so that units on slow links can be served.
        self._ws_options: dict[str, Any] = {
            "ping_interval": keepalive_s,
            "ping_timeout": keepalive_s,
            "open_timeout": max(10.0, 3 * keepalive_s),
            "max_size": MAX_MESSAGE_BYTES,
        }
        self.registry = registry.rstrip("/")
        self.pki = pki
        self.serving = serving or BlobServing()
        self.blob_urls_delay_s = blob_urls_delay_s
        self._units: dict[str, _Unit] = {}
        self._polling: dict[str, _Unit] = {}
        self._poll_locks: dict[str, asyncio.Lock] = {}
        self._poll_seen: dict[str, _PollSeen] = {}
        self._transport: dict[str, str] = {}
        self._connected: dict[str, asyncio.Event] = {}
        # (unit, txn) -> seq of each desired status sent and not answered yet, so the unit's
        # answer is recorded against it (`CloudState.record_answer`).
        self._desired_txns: dict[tuple[str, str], int | None] = {}
        self._servers: list[Server] = []
        # The system id each wss connection proved at its handshake.
        self._verified: dict[ServerConnection, str] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve units in plaintext (`cloud serve --insecure`: tests, the demo); returns the
        port."""
        server = await serve(self._unit, host, port, **self._ws_options)
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
            **self._ws_options,
        )
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()

    async def _verified_unit(self, ws: ServerConnection) -> None:
        try:
            await self._unit(ws, self._verified.get(ws))
        finally:
            self._verified.pop(ws, None)

    def _event(self, unit_id: str) -> asyncio.Event:
        return self._connected.setdefault(unit_id, asyncio.Event())

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
                    self._transport[unit_id] = "ws"
                    log.info("unit.connected", unit=unit_id, remote=str(ws.remote_address))
                await self._unit_message(unit_id, unit, env, raw)
        except ConnectionClosed:
            pass
        finally:
            if unit_id is not None and self._units.get(unit_id) is unit:
                del self._units[unit_id]
                # Its answers came on this connection; a new one is sent the status again.
                for key in [k for k in self._desired_txns if k[0] == unit_id]:
                    del self._desired_txns[key]
                self._event(unit_id).clear()
                log.info("unit.disconnected", unit=unit_id)
            if unit is not None:
                for waiter in unit.waiters.values():
                    if not waiter.done():
                        waiter.set_result({"ok": False, "error": "unit disconnected"})

    async def _unit_message(
        self, unit_id: str, unit: _Unit, env: Envelope, raw: str | bytes, *, inline: bool = False
    ) -> None:
        """Handle one unit frame; `inline`: answer a requestBlobUrls before returning (a
        polling unit reads the answer in its POST's)."""
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
            if (unit_id, txn) in self._desired_txns:
                seq = self._desired_txns.pop((unit_id, txn))
                self.state.record_answer(unit_id, seq, txn, result["ok"], result.get("error"))
                log.info("desired.answered", unit=unit_id, seq=seq, ok=result["ok"])
            return
        if isinstance(data, UnitStatus) and not self.state.append_status(
            unit_id, txn, orjson.loads(raw)["data"]
        ):
            # A resend whose ack was lost (its txn is recorded): acked again, recorded once.
            log.info("unit.status_again", unit=unit_id, txn=txn, seq=data.seq)
        await self._send(unit_id, unit, Ack(), txn=txn)
        if isinstance(data, UnitStatus):
            log.info("unit.status", unit=unit_id, delta=data.is_delta_info, seq=data.seq)
            if not unit.sent_desired:
                unit.sent_desired = True
                if self.state.desired(unit_id) is not None:
                    self._spawn(self.deliver(unit_id, timeout_s=30.0))
        elif isinstance(data, RequestBlobUrls) and inline:
            await self._answer_blob_urls(unit_id, unit, data)
        elif isinstance(data, RequestBlobUrls):
            self._spawn(self._answer_blob_urls(unit_id, unit, data))

    # units that poll

    def seen_by_poll(self, unit_id: str, *, desired: bool) -> None:
        """A poll request from the unit passed its credentials check: it is seen now.

        Args:
            desired: the request fetched its desired status (once per poll interval, so the
                gap between two of them is the unit's interval).
        """
        now = time.time()
        seen = self._poll_seen.get(unit_id)
        if seen is None:
            seen = self._poll_seen[unit_id] = _PollSeen(now)
            log.info("unit.polling", unit=unit_id)
        seen.last = now
        if desired:
            if seen.last_desired is not None:
                seen.interval_s = now - seen.last_desired
            seen.last_desired = now
        if unit_id not in self._units:
            self._transport[unit_id] = "poll"

    async def poll_messages(self, unit_id: str, raws: list[bytes]) -> list[bytes | str]:
        """Handle the frames a polling unit POSTed (as if they came over its WebSocket, in
        order); returns the cloud's answers to them. Frames naming another unit are dropped."""
        lock = self._poll_locks.setdefault(unit_id, asyncio.Lock())
        async with lock:
            unit = self._polling.get(unit_id)
            if unit is None:
                # sent_desired: a polling unit fetches its desired status, nothing is pushed.
                unit = self._polling[unit_id] = _Unit(_Replies(), sent_desired=True)
            replies = unit.ws = _Replies()
            for raw in raws:
                try:
                    env = parse_frame(raw)
                except ProtocolError as exc:
                    log.warning("unit.bad_frame", unit=unit_id, error=str(exc), transport="poll")
                    continue
                if env.header.system_id != unit_id:
                    log.warning("unit.foreign_frame", unit=unit_id, claimed=env.header.system_id)
                    continue
                await self._unit_message(unit_id, unit, env, raw, inline=True)
            return replies.frames

    def poll_desired(self, unit_id: str) -> PolledDesired | None:
        """The unit's desired status as a poll serves it, or None when it has none."""
        body = self.state.desired(unit_id)
        if body is None:
            return None
        message = parse_message(body, message_type="desiredStatus")
        if isinstance(message, DesiredStatus):
            message = self.with_trust(message)
        etag = '"' + hashlib.sha256(dump_message(message)).hexdigest()[:32] + '"'
        txn = str(uuid.uuid5(_POLL_TXNS, f"{unit_id}/{etag}"))
        self._desired_txns[(unit_id, txn)] = getattr(message, "seq", None)
        frame = dump_frame(Envelope(new_header(unit_id, txn=txn), message))
        return PolledDesired(etag, txn, frame)

    async def _polled_answer(self, unit_id: str) -> dict[str, Any] | None:
        """Wait until the unit is connected over wss (None) or acks, by poll, the desired
        status stored now (its answer)."""
        polled = self.poll_desired(unit_id)
        connected = asyncio.ensure_future(self._event(unit_id).wait())
        if polled is None:
            await connected
            return None
        unit = self._polling.get(unit_id)
        if unit is None:
            unit = self._polling[unit_id] = _Unit(_Replies(), sent_desired=True)
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        unit.waiters[polled.txn] = answer
        try:
            await asyncio.wait({connected, answer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            connected.cancel()
            if unit.waiters.get(polled.txn) is answer:
                del unit.waiters[polled.txn]
        return answer.result() if answer.done() and not answer.cancelled() else None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_blob_urls(self, unit_id: str, unit: _Unit, req: RequestBlobUrls) -> None:
        log.info(
            "unit.blob_urls_request",
            unit=unit_id,
            boot=req.boot_id,
            seq=req.seq,
            digests=len(req.digests),
        )
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
                polled = await self._polled_answer(unit_id)
                if polled is not None:
                    log.info("desired.polled", unit=unit_id, ok=polled.get("ok"))
                    return polled
                unit = self._units[unit_id]
                waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
                txn = str(uuid.uuid4())
                unit.waiters[txn] = waiter
                self._desired_txns[(unit_id, txn)] = getattr(message, "seq", None)
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

    def is_connected(self, unit_id: str) -> bool:
        """Whether the unit holds a WebSocket to this cloud now."""
        return unit_id in self._units

    def presence(self, unit_id: str, now: float | None = None) -> Presence:
        """Whether the unit is online (a WebSocket, or a poll within `views.polled_recently`),
        by which transport, and when it last polled."""
        seen = self._poll_seen.get(unit_id)
        polled_at = seen.last if seen is not None else None
        if unit_id in self._units:
            return Presence(True, "ws", polled_at)
        polled = seen is not None and polled_recently(
            time.time() if now is None else now, seen.last, seen.interval_s
        )
        return Presence(polled, self._transport.get(unit_id), polled_at)

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

    async def operate(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one operation; its answer has `ok`, and `error` when it failed.

        Raises:
            ProtocolError: a push whose desired status the parser refuses.
            ConfigError: a bad unit id or blob serving setting.
            KeyError: a field the operation needs is missing.
        """
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
            return {
                "ok": True,
                "units": {u: self.presence(u).connected for u in self.state.units()},
            }
        return {"ok": False, "error": f"unknown op {op!r}"}
