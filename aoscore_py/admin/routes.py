"""The admin API's routes, and the OpenAPI document made from the same table.

Each route is one row of `ROUTES`: method, path, a short handler, and what the document says of
it. The server registers exactly these rows and `/openapi.json` describes exactly these rows,
so the two cannot drift. Handlers stay thin: they gather plain values from the components and
hand them to the pure builders of `views` (and `metrics`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from .. import __version__
from ..cm.communication.link import CloudLink
from ..cm.imagemanager.manager import ImageManager
from ..cm.launcher.launcher import Launcher
from ..cm.launcher.nodemanager import NodeManager, RemoteNode
from ..cm.updatemanager.handler import DesiredStatusHandler
from . import views
from .metrics import CONTENT_TYPE, AgentMetrics, Gauges

ALERTS_SHOWN = 5
"""A node's newest alerts in `/nodes`."""


@dataclass
class Sources:
    """The components the routes read (their owners; the API never writes their state)."""

    handler: DesiredStatusHandler
    images: ImageManager
    launcher: Launcher
    nodes: NodeManager
    link: CloudLink
    metrics: AgentMetrics | None = None
    wall: Callable[[], float] = time.time
    clock: Callable[[], float] = time.monotonic


# -- gathering: components -> plain values -> views --------------------------------------------


def cycle_body(s: Sources, journal: int = views.JOURNAL_DEFAULT) -> dict[str, Any]:
    machine = s.handler.machine
    return views.cycle_view(
        phase=machine.phase,
        payload=machine.payload,
        revision=machine.revision,
        running=not s.handler.idle,
        failure=s.handler.failure,
        journal=machine.journal(journal) if journal else [],
    )


def items_body(s: Sources) -> dict[str, Any]:
    return views.items_view(
        s.images.records(), list(s.images.downloader.active.values()), s.clock()
    )


def node_facts(nodes: NodeManager, node: RemoteNode) -> views.NodeFacts:
    return views.NodeFacts(
        node_id=node.node_id,
        state=node.state.value,
        connected=node.connected,
        gone_for_s=node.gone_for,
        ever_connected=node.ever_connected,
        expected=node.node_id in nodes.expected,
        alerts=tuple((a.kind, a.message) for a in list(node.alerts)[-ALERTS_SHOWN:]),
    )


def nodes_body(s: Sources) -> dict[str, Any]:
    facts = [node_facts(s.nodes, node) for node in s.nodes.values()]
    return views.nodes_view(facts, s.launcher.records())


def link_body(s: Sources) -> dict[str, Any]:
    link, outbox = s.link, s.link.outbox
    return views.link_view(
        health=link.health.health.value,
        failures=link.health.failures,
        changes=list(link.health.changes),
        connected=link.connected.is_set(),
        url=link.url,
        transport=link.transport,
        publish_mode=outbox.mode.value,
        outbox_depth=outbox.depth,
        outbox_bytes=outbox.size,
        outbox_oldest_at=outbox.oldest_at(),
        now=s.wall(),
    )


def gauges(s: Sources) -> Gauges:
    """The metrics' scrape-time values."""
    outbox = s.link.outbox
    oldest = outbox.oldest_at()
    return Gauges(
        phase=s.handler.machine.phase,
        downloaded_bytes=s.images.downloader.fetched_bytes,
        downloads_active=len(s.images.downloader.active),
        outbox_depth=outbox.depth,
        outbox_bytes=outbox.size,
        outbox_oldest_age_s=None if oldest is None else max(0.0, s.wall() - oldest),
        link_health=s.link.health.health.value,
        link_connected=s.link.connected.is_set(),
        items=Counter(r.state.value for r in s.images.records()),
        nodes=Counter(n.state.value for n in s.nodes.values()),
        instances=Counter(r.state.value for r in s.launcher.records()),
    )


# -- handlers ----------------------------------------------------------------------------------


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


async def get_cycle(s: Sources, request: web.Request) -> web.Response:
    try:
        limit = views.journal_limit(request.query.get("journal"))
    except ValueError as exc:
        return error_response(400, str(exc))
    return json_response(cycle_body(s, limit))


async def get_items(s: Sources, request: web.Request) -> web.Response:
    return json_response(items_body(s))


async def get_nodes(s: Sources, request: web.Request) -> web.Response:
    return json_response(nodes_body(s))


async def get_link(s: Sources, request: web.Request) -> web.Response:
    return json_response(link_body(s))


async def get_status(s: Sources, request: web.Request) -> web.Response:
    return json_response(
        {
            "cycle": cycle_body(s),
            "items": items_body(s),
            "nodes": nodes_body(s),
            "link": link_body(s),
        }
    )


async def get_metrics(s: Sources, request: web.Request) -> web.Response:
    if s.metrics is None:
        return error_response(404, "metrics are not collected by this agent")
    response = web.Response(body=s.metrics.render())
    response.headers["Content-Type"] = CONTENT_TYPE
    return response


async def post_retry(s: Sources, request: web.Request) -> web.Response:
    """An operator's retry: the cycle runs again for the stored desired status, whatever its
    last failure was (a permanent one included: the operator fixed its cause)."""
    if not s.handler.idle:
        return error_response(409, "a cycle is running: nothing to retry")
    if s.handler.desired is None:
        return error_response(409, "no desired status is stored: nothing to retry")
    if not await s.handler.retry():
        return error_response(409, "the cycle could not be restarted now; try again")
    return json_response({"retrying": True, "phase": s.handler.machine.phase}, 202)


async def get_openapi(s: Sources, request: web.Request) -> web.Response:
    return json_response(openapi_document())


# -- the table ---------------------------------------------------------------------------------

Handler = Callable[[Sources, web.Request], Awaitable[web.Response]]

_ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
_NULLABLE_STR = {"type": ["string", "null"]}
_ERROR_INFO = {
    "type": ["object", "null"],
    "properties": {
        "aosCode": {"type": "integer"},
        "exitCode": {"type": "integer"},
        "message": {"type": "string"},
    },
}
_CYCLE = {
    "type": "object",
    "properties": {
        "phase": {"type": "string"},
        "running": {"type": "boolean"},
        "revision": {"type": "integer"},
        "desiredStatus": _NULLABLE_STR,
        "error": _NULLABLE_STR,
        "failedItems": {"type": "array", "items": {"type": "string"}},
        "failure": {"enum": ["transient", "permanent", None]},
        "journal": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "seq": {"type": "integer"},
                    "from": {"type": "string"},
                    "event": {"type": "string"},
                    "to": {"type": "string"},
                    "note": {"type": "string"},
                    "at": {"type": "number"},
                },
            },
        },
    },
    "required": ["phase", "running", "journal"],
}
_TRANSFER = {
    "type": "object",
    "properties": {
        "digest": {"type": "string"},
        "size": {"type": "integer"},
        "present": {"type": "integer"},
        "percent": {"type": ["number", "null"]},
        "resumedFrom": {"type": "integer"},
        "bytesPerSecond": {"type": "integer"},
        "etaSeconds": {"type": ["number", "null"]},
    },
}
_ITEMS = {
    "type": "object",
    "properties": {
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "version": {"type": "string"},
                    "type": {"type": "string"},
                    "indexDigest": {"type": "string"},
                    "state": {"type": "string"},
                    "error": _ERROR_INFO,
                },
            },
        },
        "downloads": {"type": "array", "items": _TRANSFER},
        "download": {"type": "object", "description": "Totals over the downloads under way."},
    },
    "required": ["items", "downloads", "download"],
}
_INSTANCE = {
    "type": "object",
    "properties": {
        "item": {"type": "string"},
        "subject": {"type": "string"},
        "instance": {"type": "integer"},
        "version": {"type": "string"},
        "state": {"type": "string"},
        "priority": {"type": "integer"},
        "error": _ERROR_INFO,
    },
}
_NODES = {
    "type": "object",
    "properties": {
        "nodes": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "state": {"enum": ["provisioned", "paused", "error", "unprovisioned"]},
                    "connected": {"type": "boolean"},
                    "goneForSeconds": {"type": "number"},
                    "everConnected": {"type": "boolean"},
                    "expected": {"type": "boolean"},
                    "alerts": {"type": "array", "items": {"type": "object"}},
                    "instances": {"type": "array", "items": _INSTANCE},
                },
            },
        },
        "unplaced": {"type": "array", "items": _INSTANCE},
    },
    "required": ["nodes", "unplaced"],
}
_LINK = {
    "type": "object",
    "properties": {
        "health": {"enum": ["online", "degraded", "offline"]},
        "connected": {"type": "boolean"},
        "failures": {"type": "integer"},
        "url": _NULLABLE_STR,
        "transport": _NULLABLE_STR,
        "publishMode": {"enum": ["direct", "buffer-only", "recovering"]},
        "outbox": {
            "type": "object",
            "properties": {
                "depth": {"type": "integer"},
                "bytes": {"type": "integer"},
                "oldestAt": {"type": ["number", "null"]},
                "oldestAgeSeconds": {"type": ["number", "null"]},
            },
        },
        "healthChanges": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["health", "connected", "publishMode", "outbox"],
}


@dataclass(frozen=True)
class Route:
    """One route of the API and what the OpenAPI document says of it."""

    method: str
    path: str
    handler: Handler
    summary: str
    schema: dict[str, Any] | None = None
    """The JSON body of a 200 answer; None for a text body."""
    content_type: str = "application/json"
    parameters: tuple[dict[str, Any], ...] = ()
    errors: dict[int, str] = field(default_factory=dict)
    status: int = 200
    """The status of a successful answer."""


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/status",
        get_status,
        "Everything below in one answer (what `aoscore status` reads).",
        {
            "type": "object",
            "properties": {"cycle": _CYCLE, "items": _ITEMS, "nodes": _NODES, "link": _LINK},
        },
    ),
    Route(
        "GET",
        "/cycle",
        get_cycle,
        "The update cycle's phase, its failure if any, and its last journal rows.",
        _CYCLE,
        parameters=(
            {
                "name": "journal",
                "in": "query",
                "required": False,
                "description": f"Journal rows wanted, newest last (default "
                f"{views.JOURNAL_DEFAULT}, at most {views.JOURNAL_MAX}).",
                "schema": {"type": "integer", "minimum": 0, "maximum": views.JOURNAL_MAX},
            },
        ),
        errors={400: "A bad `journal` parameter."},
    ),
    Route("GET", "/items", get_items, "Item versions, and the blobs downloading now.", _ITEMS),
    Route("GET", "/nodes", get_nodes, "Every node's health and the instances on it.", _NODES),
    Route(
        "GET",
        "/link",
        get_link,
        "The cloud link's health, publish mode and outbox (depth, oldest entry).",
        _LINK,
    ),
    Route(
        "GET",
        "/metrics",
        get_metrics,
        "Prometheus metrics (text format 0.0.4).",
        None,
        content_type=CONTENT_TYPE,
    ),
    Route(
        "POST",
        "/retry",
        post_retry,
        "Run the update cycle again for the stored desired status (after a failure, "
        "permanent ones included).",
        {
            "type": "object",
            "properties": {"retrying": {"const": True}, "phase": {"type": "string"}},
        },
        status=202,
        errors={409: "A cycle is running, or no desired status is stored."},
    ),
    Route("GET", "/openapi.json", get_openapi, "This document.", {"type": "object"}),
)


def openapi_document(routes: tuple[Route, ...] = ROUTES) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        content: dict[str, Any] = (
            {"application/json": {"schema": route.schema}}
            if route.schema is not None
            else {route.content_type.split(";")[0]: {"schema": {"type": "string"}}}
        )
        responses: dict[str, Any] = {str(route.status): {"description": "OK", "content": content}}
        for status, why in sorted(route.errors.items()):
            responses[str(status)] = {
                "description": why,
                "content": {"application/json": {"schema": _ERROR}},
            }
        responses["401"] = {
            "description": "No bearer token, or not the unit's (`<data-dir>/admin.token`).",
            "content": {"application/json": {"schema": _ERROR}},
        }
        operation: dict[str, Any] = {"summary": route.summary, "responses": responses}
        if route.parameters:
            operation["parameters"] = list(route.parameters)
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "aoscore agent admin API",
            "version": __version__,
            "description": "The unit's local admin API, on `<data-dir>/admin.sock` (and a "
            "loopback port with `--admin-listen`). Every request needs the bearer token in "
            "`<data-dir>/admin.token`.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
