"""The admin API's client side, for `aoscore status`: one GET over the Unix socket (httpx's
`uds` transport) or a loopback URL, with the token from the data dir.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..errors import AosError, ConfigError
from .auth import TOKEN_FILE
from .listen import SOCKET_FILE

TIMEOUT_S = 10.0


class AdminUnreachable(AosError):
    """No agent answered on the admin API, or it refused us."""


def check_admin_url(url: str) -> str:
    """An `http://HOST:PORT` base URL, without a trailing slash.

    Raises:
        ConfigError: another scheme, or no host.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"--admin {url!r}: expected http://HOST:PORT (the API has no TLS)")
    return url.rstrip("/")


def read_token(data_dir: Path) -> str:
    """The agent's admin token.

    Raises:
        AdminUnreachable: no token file (no agent ever started on this data dir).
        ConfigError: it cannot be read (another user's agent: run as that user).
    """
    path = data_dir / TOKEN_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise AdminUnreachable(
            f"no admin token at {path}: no agent has started on this data dir "
            "(is --data-dir right?)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"admin token {path}: {exc.strerror}") from None


def get_json(
    path: str,
    token: str,
    *,
    socket_path: Path | None = None,
    base_url: str | None = None,
    timeout_s: float = TIMEOUT_S,
) -> Any:
    """GET `path` from the admin API (on `socket_path`, else at `base_url`) as JSON.

    Raises:
        AdminUnreachable: nothing answers there, it timed out, or the token was refused.
    """
    where = str(socket_path) if socket_path is not None else str(base_url)
    transport = httpx.HTTPTransport(uds=str(socket_path)) if socket_path is not None else None
    base = "http://admin" if socket_path is not None else str(base_url)
    try:
        with httpx.Client(
            transport=transport, base_url=base, timeout=timeout_s, trust_env=False
        ) as client:
            response = client.get(path, headers={"Authorization": f"Bearer {token}"})
    except (httpx.ConnectError, FileNotFoundError, ConnectionRefusedError) as exc:
        raise AdminUnreachable(
            f"no agent answers on {where} ({exc}): is it running, and is --data-dir right?"
        ) from None
    except httpx.HTTPError as exc:
        raise AdminUnreachable(f"the admin API on {where} did not answer: {exc}") from None
    if response.status_code == 401:
        raise AdminUnreachable(f"the admin API on {where} refused the token")
    if response.status_code != 200:
        raise AdminUnreachable(
            f"the admin API on {where} answered {response.status_code}: {response.text[:200]}"
        )
    try:
        return response.json()
    except ValueError:
        raise AdminUnreachable(f"the admin API on {where} answered something not JSON") from None


def socket_of(data_dir: Path) -> Path:
    return data_dir / SOCKET_FILE
