"""Where the admin API listens: a Unix socket in the data dir, and a loopback port if asked.

The API has no TLS, so a TCP address must be a loopback one: anything else is refused at start.
The socket is bound under a temporary name, set to 0600, then renamed into place, so there is
no instant at which another user could connect to it.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from ..errors import ConfigError
from ..iam.tls import is_loopback

SOCKET_FILE = "admin.sock"
MAX_SOCKET_PATH = 107
"""The longest path a Unix socket may have on Linux (sun_path is 108 bytes, NUL included)."""


def parse_admin_listen(address: str) -> tuple[str, int]:
    """`HOST:PORT` for the admin API's TCP listener, HOST a loopback address.

    Raises:
        ConfigError: not HOST:PORT with a port in 0..65535, or HOST is not loopback (the API
            is plain HTTP: a token sent over a network could be read on the way).
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"admin address {address!r}: expected HOST:PORT, e.g. 127.0.0.1:8095")
    host = host.strip("[]")
    if not is_loopback(host):
        raise ConfigError(
            f"admin address {address!r}: only a loopback address (127.0.0.1, ::1, localhost) "
            "is allowed, since the admin API has no TLS; use the Unix socket or an SSH tunnel"
        )
    return host, int(port)


def bind_unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 from its first instant; a stale socket
    left there by a killed agent is replaced (the data dir's lock says none is running).

    Raises:
        ConfigError: the path is too long for a Unix socket.
        OSError: it could not be made.
    """
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"admin socket {path}: the path is longer than {MAX_SOCKET_PATH} bytes, the most "
            "a Unix socket may have; use a shorter --data-dir"
        )
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    if len(os.fsencode(tmp)) > MAX_SOCKET_PATH:
        tmp = path.with_name(f".{os.getpid()}")
    tmp.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)  # before anyone can know the name it will have
        os.replace(tmp, path)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return sock
