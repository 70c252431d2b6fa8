"""Value rules we enforce on top of AosCore's reading rules ("Our additions" in PROTOCOL.md).

AosCore reads any header version, any systemId and any digest string; we refuse them where they
are read, so that a bad value is reported once, with its JSON path, instead of failing later in
the downloader or being applied to the wrong unit. The rules live here, and only here, so that
the reader, the session, the image manager and the reference cloud agree on them.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Final

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.protocol._json import shorten
from aoscore_py.protocol.messages import PROTOCOL_VERSION

DIGEST_HEX_LENGTHS: Final = MappingProxyType({"sha256": 64, "sha384": 96, "sha512": 128})
"""The digest algorithms we accept, and how many hex digits each one's value has."""

_SHOWN = 7 + 128
"""Characters of a bad digest quoted in the reason: a whole sha512 digest, but not a flood."""
_LOWER_HEX = re.compile(r"[0-9a-f]*")
_ANY_HEX = re.compile(r"[0-9a-fA-F]*")


def check_digest(value: str) -> str:
    """`value` unchanged, if it is `sha256:`, `sha384:` or `sha512:` and lowercase hex of the
    algorithm's length.

    Raises:
        ValueError: the reason, naming the value (callers add the JSON path or the context).
    """
    algorithm, colon, digits = value.partition(":")
    expected = ", ".join(DIGEST_HEX_LENGTHS)
    if not colon:
        problem = f"expected '<algorithm>:<hex>' with algorithm one of: {expected}"
    elif algorithm not in DIGEST_HEX_LENGTHS:
        problem = f"unsupported algorithm {shorten(algorithm)} (expected one of: {expected})"
    elif not _LOWER_HEX.fullmatch(digits):
        uppercase = _ANY_HEX.fullmatch(digits) is not None
        problem = "hex digits must be lowercase" if uppercase else "not hex after the colon"
    elif len(digits) != DIGEST_HEX_LENGTHS[algorithm]:
        length = DIGEST_HEX_LENGTHS[algorithm]
        problem = f"{algorithm} needs {length} hex digits, got {len(digits)}"
    else:
        return value
    raise ValueError(f"invalid digest {shorten(value, _SHOWN)}: {problem}")


def check_version(version: int, path: str = "$.header.version") -> int:
    """`version` unchanged if it is the one we speak: a frame of another version is not read.

    Raises:
        ProtocolError: at `path`, with code notSupported.
    """
    if version != PROTOCOL_VERSION:
        reason = f"unsupported protocol version {version} (this unit speaks {PROTOCOL_VERSION})"
        raise ProtocolError(path, reason, code=AosCode.NOT_SUPPORTED)
    return version


def check_system_id(system_id: str, expected: str, path: str = "$.header.systemId") -> str:
    """`system_id` unchanged if it names `expected`, this unit: a frame for another is not ours.

    Raises:
        ProtocolError: at `path`, with code wrongState.
    """
    if system_id != expected:
        reason = f"message for unit {system_id!r}, this is unit {expected!r}"
        raise ProtocolError(path, reason, code=AosCode.WRONG_STATE)
    return system_id
