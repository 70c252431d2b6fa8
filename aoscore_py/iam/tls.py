"""TLS contexts and credentials: the device's trust store for the cloud, the unit's CA for the
unit's own links (the CM's blob server, the CM<->SM gRPC link), and the plaintext rule.

A unit trusts what its operating system trusts (the operator manages `/etc/ssl/certs`, not a
bundle shipped inside the agent) and the CA it was provisioned with. The system store is used
as OpenSSL's hashed directory, which is read one certificate at a time when a chain needs it:
loading the whole bundle up front costs about 30 ms of CPU at every start, which on a small
device is most of the agent's start-up.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..errors import ConfigError

if TYPE_CHECKING:  # grpc is imported when used: most processes never load it
    import grpc
    import grpc.aio


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


# -- the unit's own links: the CM's servers and the SMs that dial them ---------------------------
#
# The CM<->SM link (gRPC) and the CM's blob server (HTTPS) trust the unit's CA alone, never the
# system store: a certificate some public CA issued for a name is no node of this unit. Both ends
# present a certificate (mutual TLS), so the CM knows which node it talks to and a stranger on
# the network gets neither the link nor the blobs.


class TlsFiles(NamedTuple):
    """The three PEM files one end of a mutual-TLS link needs."""

    ca: Path  # the unit's CA: the only issuer the peer's certificate may come from
    cert: Path  # this end's certificate (a chain: leaf first)
    key: Path  # its private key


def _read_pem(path: Path, what: str, marker: bytes) -> bytes:
    """The bytes of a PEM file, checked to hold `marker` (so a wrong file fails here, naming
    itself, rather than as an opaque handshake failure later)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"TLS {what} file {path} is missing") from None
    except OSError as exc:
        raise ConfigError(f"cannot read TLS {what} file {path}: {exc}") from None
    if marker not in data:
        raise ConfigError(f"TLS {what} file {path} is not PEM (no '{marker.decode()}' in it)")
    return data


def _load_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """The certificate chain and key bytes, checked to parse and to belong together.

    Raises:
        ConfigError: a file is missing, not PEM, broken, or the key is not the certificate's.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_pem = _read_pem(cert, "certificate", b"-----BEGIN CERTIFICATE-----")
    key_pem = _read_pem(key, "key", b"PRIVATE KEY-----")
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise ConfigError(f"TLS certificate file {cert}: bad PEM certificate: {exc}") from None
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"TLS key file {key}: not an unencrypted PEM private key") from exc
    if private.public_key() != leaf.public_key():
        raise ConfigError(f"TLS key file {key} does not belong to the certificate in {cert}")
    return cert_pem, key_pem


def _load_ca(ca: Path) -> bytes:
    from cryptography import x509

    data = _read_pem(ca, "CA", b"-----BEGIN CERTIFICATE-----")
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"TLS CA file {ca}: bad PEM certificate: {exc}") from None
    return data


def server_context(cert: Path, key: Path, *, client_ca: Path | None = None) -> ssl.SSLContext:
    """A TLS server context (TLS 1.2 at least) presenting `cert`.

    Args:
        cert: the server's certificate chain (PEM, leaf first).
        key: its private key (PEM, unencrypted).
        client_ca: when given, every client must present a certificate issued by this CA
            (mutual TLS); a client without one, or with one from another CA, fails the
            handshake. When None, clients are not asked for a certificate.

    Raises:
        ConfigError: a file is missing, not PEM, or the key is not the certificate's; the
            message names the file.
    """
    _load_pair(cert, key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate {cert} with key {key}: {exc}") from None
    if client_ca is not None:
        _load_ca(client_ca)
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def mutual_server_context(files: TlsFiles) -> ssl.SSLContext:
    """A server context that requires a client certificate from the unit's CA (`files.ca`)."""
    return server_context(files.cert, files.key, client_ca=files.ca)


def unit_client_context(files: TlsFiles) -> ssl.SSLContext:
    """A client context for the unit's own servers: trusts `files.ca` only (not the system
    store), checks the host name, and presents `files.cert` when the server asks.

    Raises:
        ConfigError: a file is missing, not PEM, or the key is not the certificate's.
    """
    _load_pair(files.cert, files.key)
    _load_ca(files.ca)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=str(files.ca))
    try:
        context.load_cert_chain(str(files.cert), str(files.key))
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate {files.cert} with key {files.key}: {exc}") from None
    return context


def grpc_server_credentials(ca: Path, cert: Path, key: Path) -> grpc.ServerCredentials:
    """gRPC server credentials for the CM's `SMService`: mutual TLS, a client certificate from
    the unit's CA required.

    The files are read and checked here, because gRPC itself only complains at the first
    handshake, with a message that names no file.

    Raises:
        ConfigError: a file is missing, not PEM, or the key is not the certificate's.
    """
    import grpc

    chain, private = _load_pair(cert, key)
    return grpc.ssl_server_credentials(
        [(private, chain)], root_certificates=_load_ca(ca), require_client_auth=True
    )


def grpc_channel_credentials(ca: Path, cert: Path, key: Path) -> grpc.ChannelCredentials:
    """gRPC channel credentials for an SM dialling its CM: trusts the unit's CA only and
    presents the node's certificate. The host dialled must match a SAN of the CM's certificate.

    Raises:
        ConfigError: a file is missing, not PEM, or the key is not the certificate's.
    """
    import grpc

    chain, private = _load_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=_load_ca(ca), private_key=private, certificate_chain=chain
    )


def grpc_peer_name(context: grpc.aio.ServicerContext) -> str | None:
    """The common name of the client certificate of a gRPC call (a node id with the unit PKI),
    or None on a plaintext link or without a client certificate."""
    names = context.auth_context().get("x509_common_name")
    return names[0].decode() if names else None


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address (`localhost`, 127.0.0.0/8, ::1).

    Other names are not resolved: a name may resolve elsewhere tomorrow, so only a literal
    address or `localhost` counts.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_insecure_host(host: str, what: str) -> None:
    """Refuse plaintext (`--insecure`) anywhere but on loopback.

    Raises:
        ConfigError: `host` is not a loopback address; the message names it and `what`.
    """
    if not is_loopback(host):
        raise ConfigError(
            f"{what}: plaintext (--insecure) is allowed on a loopback address only, "
            f"not on {host!r}; use TLS with the unit's certificates"
        )
