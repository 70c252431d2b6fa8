"""The operator's client of a running reference cloud (used by the CLI, demo and tests)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.frames import CloseCode

from ..errors import ConfigError, LinkError, ProtocolError
from ..protocol import MAX_MESSAGE_BYTES, DesiredStatus, Envelope, dump_message, parse_any
from .state import CloudState


def operator_url(cloud_dir: Path) -> str:
    """The operator endpoint of the cloud running with `cloud_dir`.

    Raises:
        ConfigError: no cloud is running there.
    """
    endpoints = CloudState(cloud_dir).endpoints()
    if not endpoints:
        raise ConfigError(
            f"no reference cloud is running with {cloud_dir} (start `aoscore cloud serve`)"
        )
    return str(endpoints["operator"])


async def operate(url: str, request: dict[str, Any], timeout_s: float = 60.0) -> dict[str, Any]:
    """Send one operator request and return the cloud's answer.

    Raises:
        LinkError: the cloud cannot be reached or did not answer in `timeout_s`.
    """
    body = orjson.dumps(request)
    if len(body) > MAX_MESSAGE_BYTES:
        raise LinkError(
            f"the request is {len(body)} bytes, more than the cloud takes "
            f"({MAX_MESSAGE_BYTES} bytes); nothing was sent"
        )
    try:
        async with asyncio.timeout(timeout_s):
            async with connect(url, proxy=None, open_timeout=10, close_timeout=2) as ws:
                await ws.send(body)
                return orjson.loads(await ws.recv())
    except ConnectionClosed as exc:
        if exc.rcvd is not None and exc.rcvd.code == CloseCode.MESSAGE_TOO_BIG:
            raise LinkError(
                f"the cloud refused the request as too large: {exc.rcvd.reason}"
            ) from exc
        raise LinkError(f"the reference cloud at {url} closed the connection: {exc}") from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        raise LinkError(
            f"cannot reach the reference cloud at {url} ({type(exc).__name__}: {exc}); "
            "is `aoscore cloud serve` running?"
        ) from exc


async def push(
    url: str, unit_id: str, ds: DesiredStatus, timeout_s: float = 30.0
) -> dict[str, Any]:
    """Push a desired status to a unit; returns its ack (`ok`) or nack (`error`)."""
    request = {
        "op": "push",
        "unit": unit_id,
        "desiredStatus": orjson.loads(dump_message(ds)),
        "timeout": timeout_s,
    }
    return await operate(url, request, timeout_s + 10)


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
