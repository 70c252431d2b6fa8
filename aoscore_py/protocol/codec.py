"""Parse and write AosCloud v7 frames and messages. No I/O: bytes in, values out, and back.

Parsing accepts the three forms AosCore produces: a whole frame (`{"header":…, "data":…}`), a
bare `data` object, and a bare object without `messageType` (how AosCore stores a desired status)
when the caller says which type to expect. Whatever the input, a failure is a `ProtocolError`
naming the JSON path and the reason, so the link can nack with it and the CLI can print it.

Writing produces compact JSON in AosCore's exact key order, because AosCore's own tests, and
perhaps its cloud, compare bytes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson

from aoscore_py.errors import ProtocolError
from aoscore_py.protocol import _read, _write
from aoscore_py.protocol._json import JsonObject, check_nesting, decode, shorten
from aoscore_py.protocol.messages import (
    PROTOCOL_VERSION,
    Envelope,
    Header,
    Message,
    NodeConfig,
    UnitConfig,
)

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""Largest frame or message accepted, in bytes. Read at each call, so a test may patch it."""

MESSAGE_TYPES: tuple[str, ...] = tuple(_read.READERS)
"""Every `messageType` this package reads and writes."""

FRAGMENT_TYPES: tuple[str, ...] = ("unitConfig", "nodeConfig")
"""Bare bodies `parse_any` also reads: desiredStatus.unitConfig, and one of its nodes."""

T = TypeVar("T")
Raw = bytes | bytearray | memoryview | str | dict[str, Any]


def _guarded(raw: object, read: Callable[[JsonObject], T], *, strict_digests: bool = True) -> T:
    """Decode `raw` (unless already decoded), read it, and let only `ProtocolError` out.

    The catch-all turns a bug of ours into a clean refusal rather than a crash of the link;
    the reason says so, and the tests check that no input ever gets there.
    """
    try:
        if isinstance(raw, str | bytes | bytearray | memoryview):
            value = decode(raw, max_bytes=MAX_MESSAGE_BYTES)
        else:
            check_nesting(raw)
            value = raw
        with _read.digest_rule(strict_digests):
            return read(JsonObject.of(value, "$"))
    except ProtocolError:
        raise
    except Exception as exc:  # the contract is "only ProtocolError", whatever the input
        reason = f"internal error: {type(exc).__name__}: {shorten(str(exc))}"
        raise ProtocolError("$", reason) from exc


def _is_frame(o: JsonObject) -> bool:
    return (o.has("header") or o.has("data")) and not o.has("messageType")


def _frame(o: JsonObject, message_type: str | None) -> Envelope:
    head = _read.header(JsonObject.of(o.require("header"), o.child("header")))
    data = _read.message(JsonObject.of(o.require("data"), o.child("data")), message_type)
    return Envelope(header=head, data=data)


def _check_type(message_type: str | None, allowed: tuple[str, ...]) -> None:
    if message_type is not None and message_type not in allowed:
        reason = (
            f"unknown message type {shorten(message_type)} (expected one of: {', '.join(allowed)})"
        )
        raise ProtocolError("$", reason)


def parse_frame(
    raw: Raw, *, message_type: str | None = None, strict_digests: bool = True
) -> Envelope:
    """Parse a whole frame: `{"header": …, "data": …}`.

    The header's version must be 7 and is checked before anything else; its systemId is not
    checked here, as only the caller knows which unit it is (`rules.check_system_id`).
    `message_type` is used when `data` has no `messageType`.

    Raises:
        ProtocolError: the frame is malformed; `path` starts at `$` (e.g. `$.data.items[0]`).
            Another version is refused at `$.header.version` with code notSupported.
    """
    _check_type(message_type, MESSAGE_TYPES)
    return _guarded(raw, lambda o: _frame(o, message_type), strict_digests=strict_digests)


def parse_message(
    raw: Raw, *, message_type: str | None = None, strict_digests: bool = True
) -> Message:
    """Parse a bare `data` object.

    Args:
        raw: JSON text (bytes or str) or an already decoded object.
        message_type: the type to assume when the object has no `messageType`; if both are
            present and differ, that is an error.
        strict_digests: refuse digests that break our rule (`rules.check_digest`). Off only
            to read AosCore's own test data, whose placeholders such as "sha256:abcdef" AosCore
            accepts.

    Raises:
        ProtocolError: the message is malformed or of an unknown type.
    """
    _check_type(message_type, MESSAGE_TYPES)
    return _guarded(raw, lambda o: _read.message(o, message_type), strict_digests=strict_digests)


def parse_unit_config(raw: Raw) -> UnitConfig:
    """Parse the bare body of `desiredStatus.unitConfig`.

    Raises:
        ProtocolError: malformed; node label overflows carry `code=AosCode.NO_MEMORY`.
    """
    return _guarded(raw, _read.unit_config)


def parse_node_config(raw: Raw) -> NodeConfig:
    """Parse one node of `desiredStatus.unitConfig.nodes`.

    Raises:
        ProtocolError: malformed; more than 4 labels, or one over 64 characters, carries
            `code=AosCode.NO_MEMORY`, as AosCore reports it.
    """
    return _guarded(raw, _read.node_config)


def parse_any(
    raw: Raw, *, message_type: str | None = None, strict_digests: bool = True
) -> Envelope | Message | UnitConfig | NodeConfig:
    """Parse whatever form `raw` holds: a frame, a bare message, or a fragment.

    A fragment is read only when `message_type` says "unitConfig" or "nodeConfig". Otherwise an
    object with `header` or `data` and no top-level `messageType` is a frame, and anything else
    a bare message. `strict_digests` is as for `parse_message`.

    Raises:
        ProtocolError: malformed input, or an unknown `message_type`.
    """
    _check_type(message_type, MESSAGE_TYPES + FRAGMENT_TYPES)
    if message_type == "unitConfig":
        return parse_unit_config(raw)
    if message_type == "nodeConfig":
        return parse_node_config(raw)

    def read(o: JsonObject) -> Envelope | Message:
        if _is_frame(o):
            return _frame(o, message_type)
        return _read.message(o, message_type)

    return _guarded(raw, read, strict_digests=strict_digests)


def to_json(msg: Message | UnitConfig | NodeConfig) -> dict[str, Any]:
    """The JSON object of a message (or fragment), keys in wire order."""
    return _write.message(msg)


def dump_message(msg: Message | UnitConfig | NodeConfig) -> bytes:
    """Compact JSON of a bare message, as AosCore writes it.

    `correlationId` is left out when None or empty; unitStatus always has `isDeltaInfo`.
    """
    return orjson.dumps(_write.message(msg))


def dump_frame(env: Envelope) -> bytes:
    """Compact JSON of a whole frame; `createdAt` is UTC with microseconds and `Z`."""
    return orjson.dumps({"header": _write.header(env.header), "data": _write.message(env.data)})


def new_header(system_id: str, txn: str | None = None, now: datetime | None = None) -> Header:
    """A header for a frame we send: a fresh uuid4 txn and the current UTC time by default.

    A naive `now` is taken to be UTC.
    """
    if now is None:
        now = datetime.now(UTC)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    else:
        now = now.astimezone(UTC)
    return Header(
        version=PROTOCOL_VERSION,
        system_id=system_id,
        txn=txn if txn is not None else str(uuid.uuid4()),
        created_at=now,
    )
