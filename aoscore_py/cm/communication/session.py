"""The unit's side of the AosCloud v7 session, with no I/O (websockets' `Protocol` is the model).

Frames go in as bytes and come out as events; frames to send come out as bytes. The session
checks the envelope (version 7, this unit's systemId) and turns acks and nacks into events;
what waits for an ack, and when it is sent again, is the outbox's business (`outbox.py`).

A frame whose header fails those checks is dropped, not nacked (PROTOCOL.md, "Header checks"):
a nack would answer in a version the sender does not speak, or on behalf of another unit. Any
other frame we cannot read is nacked, so the cloud learns why.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson

from ...errors import ProtocolError
from ...protocol import (
    Ack,
    Envelope,
    ErrorInfo,
    Message,
    Nack,
    check_system_id,
    check_version,
    dump_frame,
    new_header,
    parse_frame,
)


@dataclass(frozen=True)
class Received:
    """A message from the cloud that the caller must handle, then ack or nack by `txn`."""

    envelope: Envelope

    @property
    def txn(self) -> str:
        return self.envelope.header.txn

    @property
    def message(self) -> Message:
        return self.envelope.data


@dataclass(frozen=True)
class Refused:
    """A frame we cannot accept, and the nack to send (under a new txn if none was readable)."""

    error: ProtocolError
    txn: str | None
    reply: bytes


@dataclass(frozen=True)
class Dropped:
    """A frame of another protocol version, or for another unit: not answered at all.

    `error.path` names the header field, `seen` is its value, `txn` the frame's when readable.
    """

    error: ProtocolError
    txn: str | None
    seen: object


@dataclass(frozen=True)
class Acked:
    """The cloud acknowledged one of ours."""

    txn: str


@dataclass(frozen=True)
class Nacked:
    """The cloud refused one of ours for now; it is sent again after `retry_after_s`."""

    txn: str
    retry_after_s: float
    error: ErrorInfo | None


Event = Received | Refused | Dropped | Acked | Nacked


@dataclass
class CloudSession:
    """The envelope rules of one unit.

    Args:
        system_id: this unit's systemId.
    """

    system_id: str

    def frame(self, message: Message, *, txn: str | None = None) -> bytes:
        """A frame for `message` with a new header (no ack expected: acks and nacks)."""
        header = new_header(self.system_id, txn=txn, now=datetime.now(UTC))
        return dump_frame(Envelope(header, message))

    def send(self, message: Message) -> tuple[str, bytes]:
        """Frame `message` under a new txn, for the outbox; returns (txn, frame)."""
        txn = str(uuid.uuid4())
        return txn, self.frame(message, txn=txn)

    def ack(self, txn: str) -> bytes:
        return self.frame(Ack(), txn=txn)

    def nack(self, txn: str, error: ErrorInfo, retry_after_ms: int = 0) -> bytes:
        return self.frame(Nack(retry_after=retry_after_ms, error_info=error), txn=txn)

    def receive(self, raw: bytes | str) -> Event:
        """Turn one received frame into an event."""
        try:
            envelope = parse_frame(raw)
        except ProtocolError as exc:
            txn = _salvage_txn(raw)
            # The header decides before the body: a frame of another version or for another unit
            # is dropped even when its body does not read as v7 (which is likely for a version).
            dropped = self._check_header(
                _salvage_header(raw, "version"), _salvage_header(raw, "systemId"), txn
            )
            if dropped is not None:
                return dropped
            return Refused(
                exc, txn, self.nack(txn or str(uuid.uuid4()), ErrorInfo.from_exception(exc))
            )
        header = envelope.header
        dropped = self._check_header(header.version, header.system_id, header.txn)
        if dropped is not None:
            return dropped
        data = envelope.data
        if isinstance(data, Ack):
            return Acked(header.txn)
        if isinstance(data, Nack):
            return Nacked(header.txn, data.retry_after / 1000.0, data.error_info)
        return Received(envelope)

    def _check_header(self, version: object, system_id: object, txn: str | None) -> Dropped | None:
        """A `Dropped` for a header of another version or unit; values of the wrong JSON type
        are left to the parser, which refuses them as malformed."""
        try:
            if type(version) is int:
                check_version(version)
        except ProtocolError as exc:
            return Dropped(exc, txn, version)
        try:
            if isinstance(system_id, str):
                check_system_id(system_id, self.system_id)
        except ProtocolError as exc:
            return Dropped(exc, txn, system_id)
        return None


def _salvage_header(raw: bytes | str, name: str) -> object:
    """A header field of a frame we could not parse, when it can be read at all."""
    try:
        doc = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if not isinstance(doc, dict):
        return None
    for key, header in doc.items():
        if isinstance(key, str) and key.lower() == "header" and isinstance(header, dict):
            for k, v in header.items():
                if isinstance(k, str) and k.lower() == name.lower():
                    return v
    return None


def _salvage_txn(raw: bytes | str) -> str | None:
    """The txn of a frame we could not parse, when it can be read at all (to nack it)."""
    txn = _salvage_header(raw, "txn")
    return txn if isinstance(txn, str) and txn else None
