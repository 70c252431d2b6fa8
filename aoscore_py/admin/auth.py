"""The admin API's bearer token: made on first start, kept in `<data-dir>/admin.token` (0600).

Anyone who can read the token file can act on the unit, so it is readable by the agent's user
only, and written durably (a cut never leaves a half token that locks the operator out).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import atomic_write
from ..logs import get_logger

log = get_logger("admin")

TOKEN_FILE = "admin.token"
TOKEN_BYTES = 32
"""Random bytes in a new token (43 URL-safe characters)."""

PRIVATE = 0o600


def valid_token(token: str) -> bool:
    """Whether `token` looks like one we make: URL-safe text of a sensible length (a file
    with anything else was damaged, or written by hand, and is replaced)."""
    return 16 <= len(token) <= 256 and all(c.isalnum() or c in "-_" for c in token)


def load_or_create_token(data_dir: Path) -> str:
    """The token in `<data_dir>/admin.token`, made if it is missing or damaged; the file's
    mode is brought back to 0600 if someone widened it.

    Raises:
        ConfigError: the file cannot be read or written (the message names it).
    """
    path = data_dir / TOKEN_FILE
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"admin token {path}: cannot be read: {exc}") from None
    if valid_token(token):
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode != PRIVATE:
            log.warning("admin.token_mode", path=str(path), mode=oct(mode), next="set to 0o600")
            os.chmod(path, PRIVATE)
        return token
    token = secrets.token_urlsafe(TOKEN_BYTES)
    try:
        # atomic_write's temporary file is made by mkstemp, 0600: the token is never readable
        # by others, not even for an instant.
        atomic_write(path, token.encode() + b"\n")
    except OSError as exc:
        raise ConfigError(f"admin token {path}: cannot be written: {exc.strerror}") from None
    log.info("admin.token_created", path=str(path))
    return token


def authorized(header: str | None, token: str) -> bool:
    """Whether an `Authorization` header carries `token` as a bearer token (compared in
    constant time, so the answer's timing tells nothing about the token)."""
    if not header:
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())
