"""The reference cloud's own CA: who its units are, and who it is to them.

Separate from the blob-signing PKI (`crypto/pki.py`): that one says which items are genuine,
this one says which TLS peers are. It is made on the first TLS `cloud serve` and kept, because
every provisioned unit trusts it (it got `ca.pem` in its provisioning answer) and holds a
client certificate it issued. Files, under `<cloud-dir>/tls/`:

ca.pem, ca.key      the CA (EC P-256; the key 0600)
server.pem/.key     the HTTPS and wss server certificate, issued again at every start for the
                    names the cloud is reached by (so a new --name needs no new CA)
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..crypto.pki import ec_root_ca, key_usage, subject_name, write_private_key
from ..errors import ConfigError
from ..fsutil import atomic_write
from ..iam.tls import TlsFiles
from ..logs import get_logger

log = get_logger("cloud.ca")

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"
_ORGANIZATION = "aoscore-py reference cloud"
_DNS_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def _name(common_name: str) -> x509.Name:
    return subject_name(_ORGANIZATION, common_name)


def _validity(days: int) -> tuple[datetime, datetime]:
    # An hour in the past, so a unit whose clock lags a little still accepts a fresh certificate.
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(hours=1), now + timedelta(days=days)


def general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """SANs for the names the cloud is reached by: an address is an IP SAN (a client dialling
    an address matches IP SANs only), anything else a DNS name.

    Raises:
        ConfigError: a name is neither an address nor a DNS name.
    """
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
            continue
        except ValueError:
            pass
        if not _DNS_NAME.match(name):
            raise ConfigError(f"server name {name!r} is neither an IP address nor a DNS name")
        out.append(x509.DNSName(name.lower()))
    return out


def _write_public(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)  # atomic_write makes files 0600; a certificate is public


@dataclass
class CloudCa:
    """The CA's certificate and key, able to issue the server's and the units' certificates."""

    folder: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def ca_path(self) -> Path:
        return self.folder / CA_FILE

    def ca_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _leaf(
        self,
        subject: str,
        public_key: ec.EllipticCurvePublicKey,
        sans: list[x509.GeneralName],
        usage: x509.ObjectIdentifier,
        days: int,
    ) -> x509.Certificate:
        start, end = _validity(days)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue_unit(
        self, system_id: str, public_key: ec.EllipticCurvePublicKey, days: int
    ) -> x509.Certificate:
        """A client certificate naming the unit: CN and a DNS SAN are its system id, which is
        what the cloud reads back from the handshake to know who dialled."""
        return self._leaf(
            system_id, public_key, [x509.DNSName(system_id)], ExtendedKeyUsageOID.CLIENT_AUTH, days
        )

    def issue_server(self, names: Iterable[str], days: int = 825) -> TlsFiles:
        """A new server certificate and key for `names`, written next to the CA.

        Raises:
            ConfigError: a name is neither an address nor a DNS name.
        """
        names = list(names)
        sans = general_names(names)
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(names[0], key.public_key(), sans, ExtendedKeyUsageOID.SERVER_AUTH, days)
        write_private_key(self.folder / SERVER_KEY_FILE, key)
        _write_public(self.folder / SERVER_FILE, cert)
        return TlsFiles(self.ca_path, self.folder / SERVER_FILE, self.folder / SERVER_KEY_FILE)


def _new_ca(folder: Path, days: int) -> CloudCa:
    cert, key = ec_root_ca(_name("aoscore-py reference cloud CA"), *_validity(days))
    # The key first: a cut between the two leaves a key without a CA, which is made again;
    # never a CA whose key is lost.
    write_private_key(folder / CA_KEY_FILE, key)
    _write_public(folder / CA_FILE, cert)
    return CloudCa(folder, cert, key)


def ensure_ca(folder: Path, days: int = 3650) -> CloudCa:
    """The cloud's CA in `folder`, made (EC P-256) the first time.

    Raises:
        ConfigError: the CA files exist but cannot be read, or the key is not the CA's.
    """
    folder.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = folder / CA_FILE, folder / CA_KEY_FILE
    if not cert_path.exists():
        ca = _new_ca(folder, days)
        log.info("ca.created", dir=str(folder), ca=str(cert_path))
        return ca
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"the cloud CA in {folder} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"the cloud CA key {key_path} does not belong to {cert_path}")
    return CloudCa(folder, cert, key)


def check_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """A unit's CSR, checked: it parses, its signature is valid (the proof that the sender
    holds the private key) and the key is EC P-256.

    Raises:
        ValueError: any of these fails; the message says which.
    """
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise ValueError(f"the CSR is not a PEM certificate request: {exc}") from None
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:
        valid = False
    if not valid:
        raise ValueError("the CSR's signature does not verify: no proof of the private key")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("the CSR's key is not EC P-256")
    return csr
