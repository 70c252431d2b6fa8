"""TLS client contexts: the device's own trust store, plus the unit's CA.

A unit trusts what its operating system trusts (the operator manages `/etc/ssl/certs`, not a
bundle shipped inside the agent) and the CA it was provisioned with. The system store is used
as OpenSSL's hashed directory, which is read one certificate at a time when a chain needs it:
loading the whole bundle up front costs about 30 ms of CPU at every start, which on a small
device is most of the agent's start-up.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import ConfigError


def client_context(extra_ca: Path | None = None) -> ssl.SSLContext:
    """A verifying TLS client context (hostname checked, TLS 1.2 at least).

    Args:
        extra_ca: a PEM file of CAs to trust besides the system's (the unit's CA).

    Raises:
        ConfigError: `extra_ca` cannot be read or holds no certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    paths = ssl.get_default_verify_paths()
    if paths.capath and Path(paths.capath).is_dir():
        context.load_verify_locations(capath=paths.capath)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if extra_ca is not None:
        try:
            context.load_verify_locations(cafile=str(extra_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"CA file {extra_ca}: {exc}") from None
    return context
