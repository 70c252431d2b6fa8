"""Wire formats of single values: timestamps, durations, base64 and hex.

Each `parse_*` takes a decoded JSON value and its path and raises `ProtocolError`; each
`format_*` writes what the matching `parse_*` reads back to the same value.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from aoscore_py.errors import ProtocolError
from aoscore_py.protocol._json import as_float, as_str, json_type, shorten

_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?([Zz]|[+-][0-9]{2}:[0-9]{2})",
    re.ASCII,
)
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_DURATION = re.compile(
    rf"P(?:{_NUMBER}W)?(?:{_NUMBER}D)?(?:T(?:{_NUMBER}H)?(?:{_NUMBER}M)?(?:{_NUMBER}S)?)?",
    re.ASCII,
)
_DURATION_UNITS = (7 * 86400.0, 86400.0, 3600.0, 60.0, 1.0)
_HEX = re.compile(r"(?:[0-9A-Fa-f]{2})*", re.ASCII)


def parse_timestamp(value: object, path: str) -> datetime:
    """An RFC 3339 timestamp, Z or offset, any fraction, as an aware UTC datetime.

    Digits past microseconds are dropped (AosCore writes microseconds; the cloud may send nanos).
    """
    text = as_str(value, path)
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise ProtocolError(path, f"invalid timestamp {shorten(text)} (expected RFC 3339)")
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, offset = match.group(7), match.group(8)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        if offset in ("Z", "z"):
            tz = UTC
        else:
            sign = -1 if offset[0] == "-" else 1
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            tz = timezone(sign * delta)
        stamp = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        return stamp.astimezone(UTC)
    except (ValueError, OverflowError):
        raise ProtocolError(path, f"invalid timestamp {shorten(text)}") from None


def format_timestamp(stamp: datetime) -> str:
    """UTC with exactly six fraction digits and Z, as AosCore writes `createdAt`.

    A naive datetime is taken to be UTC already.
    """
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(UTC)
    return (
        f"{stamp.year:04d}-{stamp.month:02d}-{stamp.day:02d}T"
        f"{stamp.hour:02d}:{stamp.minute:02d}:{stamp.second:02d}.{stamp.microsecond:06d}Z"
    )


def parse_duration(value: object, path: str) -> float:
    """Seconds, from a JSON number of seconds or an ISO 8601 duration ("PT5S", "PT1M30S").

    Years and months are refused: their length in seconds is not fixed.
    """
    if not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, int | float):
            reason = f"expected ISO 8601 duration or number of seconds, got {json_type(value)}"
            raise ProtocolError(path, reason)
        return as_float(value, path, minimum=0.0)
    match = _DURATION.fullmatch(value)
    if match is None or value in ("P", "PT") or value.endswith("T"):
        reason = f"invalid duration {shorten(value)} (expected ISO 8601 such as 'PT5S')"
        raise ProtocolError(path, reason)
    seconds = 0.0
    for part, unit in zip(match.groups(), _DURATION_UNITS, strict=True):
        if part is not None:
            seconds += float(part) * unit
    if not math.isfinite(seconds):
        raise ProtocolError(path, f"duration too large: {shorten(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    """ISO 8601 in seconds only ("PT90S"), exact enough to read back to the same float."""
    if seconds.is_integer():
        return f"PT{int(seconds)}S"
    # repr is the shortest text that reads back to the same float; Decimal drops the exponent.
    return f"PT{format(Decimal(repr(seconds)), 'f')}S"


def parse_base64(value: object, path: str) -> bytes:
    """Standard base64 with padding, strictly: stray characters are an error, not skipped."""
    text = as_str(value, path)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(path, "not valid base64") from None


def format_base64(data: bytes) -> str:
    """Standard base64 with padding."""
    return base64.b64encode(data).decode("ascii")


def parse_hex(value: object, path: str) -> bytes:
    """Hex digits, two per byte, either case, nothing else."""
    text = as_str(value, path)
    if _HEX.fullmatch(text) is None:
        raise ProtocolError(path, "not valid hex")
    return bytes.fromhex(text)


def format_hex(data: bytes) -> str:
    """Lowercase hex."""
    return data.hex()
