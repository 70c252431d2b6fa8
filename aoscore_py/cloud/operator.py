"""The operator HTTP API of the reference cloud: JSON over HTTP on loopback, every request with
`Authorization: Bearer <token>` (the token is made on first start in `<cloud-dir>/operator.token`,
mode 0600; anything else is 401).

- `GET  /units`: every unit with `connected` (a WebSocket, or a poll in the last 5 minutes or
  3 of its poll intervals), `transport` (ws or poll: how it was last seen since the cloud
  started; null before), `health`, `lastSeen` (its last status or poll), `lastSeq`,
  `statuses`, `desiredSeq` and `view` (counts of the cloud's view of it, `ordering.unit_view`).
- `GET  /units/{id}/timeline`: its statuses in its own order, flagged, with `summary` counts;
  404 for a unit the cloud never heard of.
- `GET  /units/{id}/desired`: the last desired status stored for it; 404 without one.
- `PUT  /units/{id}/desired?timeout=S`: the body is a desired status (a frame, a data object or
  a bare body), read by the protocol's parser: 400 with its `path` and `reason` if it refuses
  it; 404 for a unit that was never provisioned (over TLS; `--insecure` takes any id); else
  stored with the unit's next `seq`, sent if the unit is connected, and answered 200
  when the unit acked it, 202 when it stays stored for later (`acked`, `error`, `nack` say why).
- `POST /images`: publish (`publishing.PublishRequest`): 201 with its `indexDigest`.
- `GET|PUT /blobs/serving`: how blob URLs are served (test faults: signing, base, deadFirst).
- `POST /units/{id}/raw`: send `{"frame"}` to the unit as it is; its next ack or nack (tests).

A body larger than `MAX_MESSAGE_BYTES` is 413 with a message. Every answer is a JSON object
with `ok`; every refusal has `error`.
"""

from __future__ import annotations

import asyncio
import hmac
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from ..errors import AosError, ConfigError, LocalError, ProtocolError
from ..logs import get_logger
from ..protocol import MAX_MESSAGE_BYTES, DesiredStatus, Envelope, dump_message, parse_any
from .ordering import in_unit_order, summary, unit_view
from .publishing import PublishRequest
from .server import CloudServer
from .state import check_unit_id
from .views import unit_health, view_counts

log = get_logger("cloud.operator")

DEFAULT_PUSH_TIMEOUT_S = 30.0
MAX_PUSH_TIMEOUT_S = 3600.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _answer(status: HTTPStatus, body: dict[str, Any]) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _refuse(status: HTTPStatus, error: str, **extra: Any) -> web.Response:
    return _answer(status, {"ok": False, "error": error, **extra})


class OperatorApi:
    """The operator HTTP API over one running cloud.

    Args:
        server: the cloud (its units, state and blob serving).
        token: the bearer token every request must carry.
        provisioned: whether a unit id was provisioned here (over TLS, where only those units
            can ever fetch a desired status); None takes any id (`--insecure`).
    """

    def __init__(
        self,
        server: CloudServer,
        token: str,
        provisioned: Callable[[str], bool] | None = None,
    ) -> None:
        self.server = server
        self.state = server.state
        self._provisioned = provisioned
        self._token = token.encode()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=MAX_MESSAGE_BYTES, middlewares=[self._authorize, self._too_large]
        )
        app.router.add_get("/units", self._units)
        app.router.add_get("/units/{unit}/timeline", self._timeline)
        app.router.add_get("/units/{unit}/desired", self._get_desired)
        app.router.add_put("/units/{unit}/desired", self._put_desired)
        app.router.add_post("/units/{unit}/raw", self._raw)
        app.router.add_post("/images", self._publish)
        app.router.add_get("/blobs/serving", self._serving)
        app.router.add_put("/blobs/serving", self._serving)
        return app

    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (loopback only: the token is sent in clear); returns the port."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        try:
            sock = socket.create_server(("127.0.0.1", port))
        except OSError as exc:
            raise LocalError(f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}") from None
        await web.SockSite(self._runner, sock).start()
        return int(sock.getsockname()[1])

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), self._token
        ):
            log.warning("operator.refused", method=request.method, path=request.path)
            response = _refuse(
                HTTPStatus.UNAUTHORIZED,
                "send Authorization: Bearer <token> with the token in <cloud-dir>/operator.token",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    @web.middleware
    async def _too_large(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if (request.content_length or 0) > MAX_MESSAGE_BYTES:
            return self._oversized(request.content_length)
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            return self._oversized(None)

    @staticmethod
    def _oversized(length: int | None) -> web.Response:
        size = f"{length} bytes" if length is not None else "larger"
        return _refuse(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            f"the request is {size}, more than the cloud takes ({MAX_MESSAGE_BYTES} bytes)",
        )

    # units

    def _unit_id(self, request: web.Request) -> str:
        return check_unit_id(request.match_info["unit"])

    async def _units(self, request: web.Request) -> web.Response:
        units = []
        now = time.time()
        for record in self.state.fleet():
            view = unit_view(self.state.view_records(record.unit))
            presence = self.server.presence(record.unit, now)
            seen = [t for t in (record.last_seen, presence.polled_at) if t is not None]
            units.append(
                {
                    "id": record.unit,
                    "connected": presence.connected,
                    "transport": presence.transport,
                    "health": unit_health(presence.connected, view),
                    "firstSeen": record.first_seen,
                    "lastSeen": max(seen, default=None),
                    "lastBootId": record.last_boot,
                    "lastSeq": record.last_seq,
                    "statuses": record.statuses,
                    "desiredSeq": record.desired_seq,
                    "view": view_counts(view),
                }
            )
        return _answer(HTTPStatus.OK, {"ok": True, "units": units})

    async def _timeline(self, request: web.Request) -> web.Response:
        try:
            unit = self._unit_id(request)
        except ConfigError as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, exc.message)
        records = self.state.timeline(unit)
        if not records and unit not in self.state.units():
            return _refuse(HTTPStatus.NOT_FOUND, f"unit {unit} is not known to this cloud")
        ordered = in_unit_order(records)
        statuses = [
            {
                "receivedAt": o.record.get("receivedAt"),
                "txn": o.record.get("txn"),
                "bootId": o.boot_id,
                "seq": o.seq,
                "duplicate": o.duplicate,
                "late": o.late,
                "missingBefore": o.gap_before,
                "unitStatus": o.record.get("unitStatus"),
            }
            for o in ordered
        ]
        body = {"ok": True, "unit": unit, "summary": summary(ordered), "statuses": statuses}
        return _answer(HTTPStatus.OK, body)

    async def _get_desired(self, request: web.Request) -> web.Response:
        try:
            unit = self._unit_id(request)
        except ConfigError as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, exc.message)
        body = self.state.desired(unit)
        if body is None:
            return _refuse(HTTPStatus.NOT_FOUND, f"no desired status for unit {unit}")
        return _answer(
            HTTPStatus.OK, {"ok": True, "unit": unit, "desiredStatus": orjson.loads(body)}
        )

    async def _put_desired(self, request: web.Request) -> web.Response:
        try:
            unit = self._unit_id(request)
            timeout_s = _timeout(request.query.get("timeout"))
        except ConfigError as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, exc.message)
        if self._provisioned is not None and not self._provisioned(unit):
            log.warning("operator.desired_refused", unit=unit, reason="not provisioned")
            return _refuse(HTTPStatus.NOT_FOUND, f"no such unit: {unit} (not provisioned)")
        raw = await request.read()
        try:
            parsed = parse_any(raw, message_type="desiredStatus")
            message = parsed.data if isinstance(parsed, Envelope) else parsed
            if not isinstance(message, DesiredStatus):
                raise ProtocolError("$", f"expected a desiredStatus, got {type(message).__name__}")
        except ProtocolError as exc:
            log.warning("operator.desired_refused", unit=unit, path=exc.path, reason=exc.reason)
            return _refuse(HTTPStatus.BAD_REQUEST, exc.message, path=exc.path, reason=exc.reason)
        request_body = {
            "op": "push",
            "unit": unit,
            "desiredStatus": orjson.loads(dump_message(message)),
            "timeout": timeout_s,
        }
        reply = await self.server.operate(request_body)
        stored = parse_any(self.state.desired(unit) or b"{}", message_type="desiredStatus")
        seq = stored.seq if isinstance(stored, DesiredStatus) else None
        acked = bool(reply.get("ok"))
        log.info("operator.desired_stored", unit=unit, seq=seq, acked=acked)
        answer = {**reply, "stored": True, "seq": seq, "acked": acked}
        return _answer(HTTPStatus.OK if acked else HTTPStatus.ACCEPTED, answer)

    async def _raw(self, request: web.Request) -> web.Response:
        try:
            unit = self._unit_id(request)
            body = orjson.loads(await request.read())
            frame = body["frame"]
            timeout_s = float(body.get("timeout", 10.0))
        except (ConfigError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, f"expected {{frame, timeout?}}: {exc}")
        request_body = {"op": "raw", "unit": unit, "frame": str(frame), "timeout": timeout_s}
        return _answer(HTTPStatus.OK, await self.server.operate(request_body))

    # images and blobs

    async def _publish(self, request: web.Request) -> web.Response:
        from .imports import import_image
        from .service import publish

        try:
            wanted = PublishRequest.from_json(orjson.loads(await request.read()))
        except orjson.JSONDecodeError as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}")
        except ConfigError as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, exc.message)
        root, registry = self.state.root, self.server.registry
        try:
            if wanted.image is not None:
                image = await asyncio.to_thread(
                    import_image, root, wanted.name, wanted.image, registry_url=registry
                )
            else:
                check = ["/bin/sh", "-c", wanted.healthcheck] if wanted.healthcheck else None
                image = await asyncio.to_thread(
                    publish,
                    root,
                    wanted.name,
                    registry_url=registry,
                    healthcheck=check,
                    health_start_period_s=wanted.start_period_s,
                    extra_layer_bytes=wanted.size,
                    item_config=wanted.item_config,
                )
        except ConfigError as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, exc.message)
        except AosError as exc:
            log.warning("operator.publish_failed", name=wanted.name, error=exc.message)
            return _refuse(HTTPStatus.BAD_GATEWAY, exc.message)
        body = {"ok": True, "name": wanted.name, "indexDigest": image.index_digest}
        return _answer(HTTPStatus.CREATED, body)

    async def _serving(self, request: web.Request) -> web.Response:
        settings: dict[str, Any] = {}
        if request.method == "PUT":
            try:
                settings = orjson.loads(await request.read())
                if not isinstance(settings, dict) or not settings:
                    raise ValueError("expected a non-empty JSON object")
            except (orjson.JSONDecodeError, ValueError) as exc:
                return _refuse(HTTPStatus.BAD_REQUEST, f"{exc}")
        try:
            reply = await self.server.operate({"op": "blobs", **settings})
        except ConfigError as exc:
            return _refuse(HTTPStatus.BAD_REQUEST, exc.message)
        return _answer(HTTPStatus.OK, reply)


def _timeout(value: str | None) -> float:
    """A push's `?timeout=` in seconds (how long to wait for the unit's ack).

    Raises:
        ConfigError: not a number from 0 to `MAX_PUSH_TIMEOUT_S`.
    """
    if value is None:
        return DEFAULT_PUSH_TIMEOUT_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= MAX_PUSH_TIMEOUT_S:
        raise ConfigError(f"timeout {value!r}: expected seconds from 0 to {MAX_PUSH_TIMEOUT_S:g}")
    return seconds
