"""The bearer tokens discovery hands out and the wss handshake checks.

A token names one unit and when it expires, sealed with an HMAC under a key only the cloud
holds (`<cloud-dir>/tls/token.key`, 0600). Checking one is a computation, not a lookup: no
table grows with the fleet, nothing is shared between connections, and tokens stay valid
across a restart of the cloud until they expire.

Format: `<base64url(system id)>.<expiry, unix seconds>.<base64url(HMAC-SHA256 of the two)>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..fsutil import atomic_write

KEY_FILE = "token.key"
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class BearerTokens:
    """Issues and checks bearer tokens.

    Args:
        key: the HMAC key.
        ttl_s: how long a token is valid after it is issued.
        clock: the time now, in unix seconds (a test's clock).
    """

    key: bytes = field(repr=False)
    ttl_s: float = 3600.0
    clock: Callable[[], float] = time.time

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self.key, payload.encode(), hashlib.sha256).digest()

    def issue(self, system_id: str) -> str:
        """A token for `system_id`, valid for `ttl_s` from now."""
        # Rounded up: a token lives at least `ttl_s`, never a fraction of a second.
        payload = f"{_b64(system_id.encode())}.{math.ceil(self.clock() + self.ttl_s)}"
        return f"{payload}.{_b64(self._mac(payload))}"

    def check(self, token: str) -> str | None:
        """The system id `token` was issued for, or None when it is malformed, forged or
        expired (the caller answers 401 either way: a unit just runs discovery again)."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        payload = f"{parts[0]}.{parts[1]}"
        try:
            mac = _unb64(parts[2])
            expires = int(parts[1])
            system_id = _unb64(parts[0]).decode()
        except (ValueError, binascii.Error):
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        if expires <= self.clock():
            return None
        return system_id


def load_key(folder: Path) -> bytes:
    """The HMAC key in `folder`, made the first time (0600)."""
    path = folder / KEY_FILE
    try:
        key = path.read_bytes()
        if len(key) == _KEY_BYTES:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_bytes(_KEY_BYTES)
    atomic_write(path, key)
    os.chmod(path, 0o600)
    return key
