"""The operator's client of a running reference cloud, over its HTTP API (`operator.py`); used
by the CLI, the demo and the test rigs. The URL is in `<cloud-dir>/cloud.json`, the bearer
token in `<cloud-dir>/operator.token`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import orjson

from ..errors import LinkError, LocalError, ProtocolError
from ..protocol import MAX_MESSAGE_BYTES, DesiredStatus, Envelope, dump_message, parse_any
from .state import CloudState


def operator_url(cloud_dir: Path) -> str:
    """The operator API of the cloud running with `cloud_dir`.

    Raises:
        LocalError: no cloud is running there (an operation that failed, not bad input).
    """
    endpoints = CloudState(cloud_dir).endpoints()
    if not endpoints:
        raise LocalError(
            f"no reference cloud is running with {cloud_dir} (start `aoscore cloud serve`)"
        )
    return str(endpoints["operator"])


def operator_token(cloud_dir: Path) -> str:
    """The bearer token of the cloud's operator API.

    Raises:
        ConfigError: the cloud never started with `cloud_dir`.
    """
    return CloudState(cloud_dir).operator_token()


async def call(
    url: str,
    method: str,
    path: str,
    *,
    token: str | None,
    body: bytes | None = None,
    params: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> tuple[int, dict[str, Any]]:
    """One request to the operator API; its HTTP status and JSON answer (refusals included).

    Raises:
        LinkError: the body is larger than the cloud takes (nothing is sent), or the cloud
            cannot be reached, did not answer in `timeout_s` or answered no JSON.
    """
    if body is not None and len(body) > MAX_MESSAGE_BYTES:
        raise LinkError(
            f"the request is {len(body)} bytes, more than the cloud takes "
            f"({MAX_MESSAGE_BYTES} bytes); nothing was sent"
        )
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout, trust_env=False) as session,
            session.request(
                method, url.rstrip("/") + path, data=body, params=params, headers=headers
            ) as response,
        ):
            raw = await response.read()
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise LinkError(
            f"cannot reach the reference cloud at {url} ({type(exc).__name__}: {exc}); "
            "is `aoscore cloud serve` running?"
        ) from exc
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise LinkError(
            f"the cloud at {url} answered {status} without JSON: {raw[:200]!r}"
        ) from None
    if not isinstance(answer, dict):
        raise LinkError(f"the cloud at {url} answered {status} with {type(answer).__name__}")
    return status, answer


async def operate(
    url: str, request: dict[str, Any], timeout_s: float = 60.0, *, token: str | None = None
) -> dict[str, Any]:
    """Run one operation by name (`op`: push, units, blobs, raw) through the HTTP API; its
    answer, with `ok` and, on a refusal, `error` and `status`.

    Raises:
        LinkError: as `call`; or an unknown op.
    """
    op, unit = request.get("op"), str(request.get("unit", ""))
    if op == "push":
        body = orjson.dumps(request.get("desiredStatus"))
        params = {"timeout": str(request.get("timeout", 30.0))}
        route: tuple[str, str, bytes | None, dict[str, str] | None] = (
            "PUT",
            f"/units/{unit}/desired",
            body,
            params,
        )
    elif op == "units":
        route = ("GET", "/units", None, None)
    elif op == "blobs":
        settings = {k: v for k, v in request.items() if k != "op"}
        route = ("PUT", "/blobs/serving", orjson.dumps(settings), None)
        if not settings:
            route = ("GET", "/blobs/serving", None, None)
    elif op == "raw":
        fields = {"frame": request.get("frame"), "timeout": request.get("timeout", 10.0)}
        route = ("POST", f"/units/{unit}/raw", orjson.dumps(fields), None)
    else:
        raise LinkError(f"unknown operation {op!r}: use push, units, blobs or raw")
    method, path, body, params = route
    status, answer = await call(
        url, method, path, token=token, body=body, params=params, timeout_s=timeout_s
    )
    if status >= 400:
        answer = {**answer, "ok": False, "status": status}
    return answer


async def push(
    url: str, unit_id: str, ds: DesiredStatus, timeout_s: float = 30.0, *, token: str | None = None
) -> dict[str, Any]:
    """Push a desired status to a unit; returns its ack (`ok`) or nack (`error`), with the
    `seq` the cloud stamped on it, or the cloud's refusal (`status` 400, `path`, `reason`)."""
    request = {
        "op": "push",
        "unit": unit_id,
        "desiredStatus": orjson.loads(dump_message(ds)),
        "timeout": timeout_s,
    }
    return await operate(url, request, timeout_s + 10, token=token)


def load_desired_status(path: Path) -> DesiredStatus:
    """A desired status from a file holding a frame, a bare data object or a bare body.

    Raises:
        ProtocolError: the file is not a valid desired status.
    """
    raw = path.read_bytes()
    parsed = parse_any(raw, message_type="desiredStatus")
    message = parsed.data if isinstance(parsed, Envelope) else parsed
    if not isinstance(message, DesiredStatus):
        raise ProtocolError("$", f"expected a desiredStatus, got {type(message).__name__}")
    return message
