"""Decoding JSON and reading it field by field, with the JSON path of every value at hand.

Every failure raises `ProtocolError(path, reason)` so that a nack, a log line or
`aoscore protocol check` can say exactly which value was wrong. Keys are matched
case-insensitively and null counts as missing, as AosCore reads them.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from aoscore_py.errors import ProtocolError

T = TypeVar("T")
E = TypeVar("E", bound=enum.Enum)

MAX_NESTING = 64
"""Deepest nesting of arrays and objects accepted. Real messages stay under 12 levels; the limit
keeps hostile input from costing stack or time anywhere downstream."""

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
"""Integers outside int64/uint64 cannot be written back by orjson, nor read by AosCore."""

_STRUCTURE = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


# --- paths and type names -------------------------------------------------------------------------


def child(path: str, key: str) -> str:
    """The path of `key` inside the object at `path`; odd keys are written as `["key"]`."""
    if key.isascii() and key.isidentifier():
        return f"{path}.{key}"
    return f"{path}[{orjson.dumps(key).decode()}]"


def json_type(value: object) -> str:
    """The JSON name of a value's type, for reasons such as "expected integer, got string"."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def shorten(text: str, limit: int = 64) -> str:
    """Quote a value for an error reason, cut so that a huge value does not flood a log."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def too_large(size: int | None, limit: int) -> str:
    """The reason for a message over the size limit; size None when only 'more than' is known."""
    shown = f"{size} bytes" if size is not None else f"more than {limit} bytes"
    return f"message too large ({shown}, limit {limit})"


# --- decoding -------------------------------------------------------------------------------------


def decode(raw: object, *, max_bytes: int) -> Any:
    """Turn bytes or str into a JSON value, refusing what is too big, not UTF-8 or too deep.

    Raises:
        ProtocolError: at "$", with the reason.
    """
    if isinstance(raw, str):
        try:
            data = raw.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolError("$", "not UTF-8") from None
    elif isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
    else:
        raise ProtocolError("$", f"expected bytes or str, got {json_type(raw)}")
    if len(data) > max_bytes:
        raise ProtocolError("$", too_large(len(data), max_bytes))
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        # Explain the failure in our words first: orjson's own messages for these are obscure.
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("$", "not UTF-8") from None
        if _too_deep_text(data):
            raise ProtocolError("$", "nesting too deep") from None
        raise ProtocolError("$", f"not valid JSON: {exc}") from None
    check_nesting(value)
    return value


def _too_deep_text(data: bytes) -> bool:
    """Whether raw JSON text nests deeper than MAX_NESTING; stops as soon as it does."""
    depth = 0
    for match in _STRUCTURE.finditer(data):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_NESTING:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def check_nesting(value: object) -> None:
    """Refuse a decoded value nested deeper than MAX_NESTING (this also stops cycles).

    Raises:
        ProtocolError: at "$", "nesting too deep".
    """
    stack: list[tuple[dict[Any, Any] | list[Any], int]] = []
    if isinstance(value, dict | list):
        stack.append((value, 1))
    while stack:
        container, depth = stack.pop()
        if depth > MAX_NESTING:
            raise ProtocolError("$", "nesting too deep")
        children = container.values() if isinstance(container, dict) else container
        for item in children:
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))


# --- scalar conversions ---------------------------------------------------------------------------


def _wrong(expected: str, value: object, path: str) -> ProtocolError:
    return ProtocolError(path, f"expected {expected}, got {json_type(value)}")


def as_str(value: object, path: str) -> str:
    """A JSON string."""
    if not isinstance(value, str):
        raise _wrong("string", value, path)
    return value


def as_int(value: object, path: str, *, minimum: int | None = None) -> int:
    """A JSON integer: booleans and numbers with a fraction are refused."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong("integer", value, path)
    if not INT_MIN <= value <= INT_MAX:
        raise ProtocolError(path, "integer out of range")
    if minimum is not None and value < minimum:
        raise ProtocolError(path, f"expected an integer >= {minimum}, got {value}")
    return int(value)


def as_float(value: object, path: str, *, minimum: float | None = None) -> float:
    """A JSON number, integer or not, as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong("number", value, path)
    if isinstance(value, int):
        as_int(value, path)
    result = float(value)
    if not math.isfinite(result):
        raise ProtocolError(path, "expected a finite number")
    if minimum is not None and result < minimum:
        raise ProtocolError(path, f"expected a number >= {minimum:g}, got {result!r}")
    return result


def as_bool(value: object, path: str) -> bool:
    """A JSON boolean (not 0 or 1)."""
    if not isinstance(value, bool):
        raise _wrong("boolean", value, path)
    return value


def as_list(value: object, path: str) -> list[Any]:
    """A JSON array."""
    if not isinstance(value, list):
        raise _wrong("array", value, path)
    return value


def as_enum(cls: type[E], value: object, path: str) -> E:
    """A member of `cls`, matched case-sensitively by its wire value."""
    text = as_str(value, path)
    try:
        return cls(text)
    except ValueError:
        expected = ", ".join(str(member.value) for member in cls)
        reason = f"unknown value {shorten(text)} for {cls.__name__} (expected one of: {expected})"
        raise ProtocolError(path, reason) from None


def array_of(convert: Callable[[Any, str], T], value: object, path: str) -> tuple[T, ...]:
    """Convert each element of a JSON array, naming it `path[i]` on failure."""
    return tuple(convert(item, f"{path}[{i}]") for i, item in enumerate(as_list(value, path)))


# --- objects --------------------------------------------------------------------------------------


class JsonObject:
    """A JSON object read by case-insensitive key, knowing its own path.

    An exact key wins; otherwise the first key equal to it ignoring case. Null reads as missing.
    Keys it is never asked about are ignored, which is how unknown fields are skipped.
    """

    __slots__ = ("_data", "_folded", "path")

    def __init__(self, data: dict[Any, Any], path: str) -> None:
        self._data = data
        self._folded: dict[str, Any] | None = None
        self.path = path

    @classmethod
    def of(cls, value: object, path: str) -> JsonObject:
        """Wrap a JSON object, refusing any other JSON value."""
        if not isinstance(value, dict):
            raise _wrong("object", value, path)
        return cls(value, path)

    def child(self, key: str) -> str:
        """The path of one of this object's fields."""
        return child(self.path, key)

    def get(self, key: str) -> Any:
        """The value under `key`, or None when missing or null."""
        if key in self._data:
            return self._data[key]
        if self._folded is None:
            folded: dict[str, Any] = {}
            for name in self._data:
                if isinstance(name, str):
                    folded.setdefault(name.lower(), name)
            self._folded = folded
        name = self._folded.get(key.lower())
        return None if name is None else self._data[name]

    def has(self, key: str) -> bool:
        """Whether `key` holds a non-null value."""
        return self.get(key) is not None

    def require(self, key: str) -> Any:
        """The value under `key`; missing or null is an error."""
        value = self.get(key)
        if value is None:
            raise ProtocolError(self.child(key), "missing required field")
        return value

    # Typed accessors: `req_*` fail on a missing field, `opt_*` return None (or a default).

    def req_str(self, key: str) -> str:
        return as_str(self.require(key), self.child(key))

    def opt_str(self, key: str) -> str | None:
        value = self.get(key)
        return None if value is None else as_str(value, self.child(key))

    def req_int(self, key: str, *, minimum: int | None = None) -> int:
        return as_int(self.require(key), self.child(key), minimum=minimum)

    def opt_int(self, key: str, *, minimum: int | None = None) -> int | None:
        value = self.get(key)
        return None if value is None else as_int(value, self.child(key), minimum=minimum)

    def req_float(self, key: str) -> float:
        return as_float(self.require(key), self.child(key))

    def req_bool(self, key: str) -> bool:
        return as_bool(self.require(key), self.child(key))

    def opt_bool(self, key: str, default: bool) -> bool:
        value = self.get(key)
        return default if value is None else as_bool(value, self.child(key))

    def req_enum(self, cls: type[E], key: str) -> E:
        return as_enum(cls, self.require(key), self.child(key))

    def req(self, key: str, convert: Callable[[Any, str], T]) -> T:
        """Convert a required field with `convert(value, path)`."""
        return convert(self.require(key), self.child(key))

    def opt(self, key: str, convert: Callable[[Any, str], T]) -> T | None:
        """Convert an optional field with `convert(value, path)`."""
        value = self.get(key)
        return None if value is None else convert(value, self.child(key))

    def req_array(self, key: str, convert: Callable[[Any, str], T]) -> tuple[T, ...]:
        return array_of(convert, self.require(key), self.child(key))

    def opt_array(self, key: str, convert: Callable[[Any, str], T]) -> tuple[T, ...] | None:
        value = self.get(key)
        return None if value is None else array_of(convert, value, self.child(key))

    def array(self, key: str, convert: Callable[[Any, str], T]) -> tuple[T, ...]:
        """An array field where missing means empty."""
        return self.opt_array(key, convert) or ()

    def str_array(self, key: str) -> tuple[str, ...]:
        return self.array(key, as_str)
