"""The unit's identity towards its cloud: a key that never leaves the unit, the certificate
the cloud issued for it, the cloud's CA and the system id, in `<data-dir>/identity/`:

key.pem      EC P-256 private key, mode 0600, made here and never sent anywhere
cert.pem     the client certificate the cloud signed (its CN is the system id)
ca.pem       the CA that signed it, as the cloud's provisioning answer gave it
system_id    the system id, for people and scripts (cert.pem is the authority)
discovery    the discovery URL it was provisioned through, so later starts need no option

Provisioning (first start, with a one-use token): the unit makes its key, sends a CSR (its
signature proves the unit holds the key) and the token to the cloud, checks the answer and
keeps it. cert.pem is the commit point: it is written after ca.pem, so a present cert.pem
means a complete identity. A key left by an attempt that did not finish (a refused token, a
cut) is used again by the next. Later starts read the files and need no token; a unit whose
identity is gone needs a new token and becomes a new unit with a new system id.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..crypto.pki import write_private_key
from ..errors import (
    CertificateError,
    ConfigError,
    LinkError,
    LocalError,
    ProvisioningError,
    certificate_failure,
)
from ..fsutil import atomic_write, make_dirs
from ..logs import get_logger
from .tls import TlsFiles, client_context

log = get_logger("iam.identity")

IDENTITY_DIR = "identity"
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"
CA_FILE = "ca.pem"
SYSTEM_ID_FILE = "system_id"
DISCOVERY_FILE = "discovery"
PROVISIONING_PATH = "provisioning"


@dataclass(frozen=True)
class Identity:
    """A provisioned unit's identity files and what they say."""

    folder: Path
    system_id: str
    discovery_url: str | None = None

    @property
    def tls_files(self) -> TlsFiles:
        return TlsFiles(self.folder / CA_FILE, self.folder / CERT_FILE, self.folder / KEY_FILE)

    def client_context(self, cloud_ca: Path | None = None) -> ssl.SSLContext:
        """A TLS client context for the cloud's HTTPS and wss: trusts the system store, the CA
        of the provisioning answer and `cloud_ca`, and presents the unit's certificate.

        Raises:
            ConfigError: a file cannot be read.
        """
        context = client_context(cloud_ca)
        files = self.tls_files
        try:
            context.load_verify_locations(cafile=str(files.ca))
            context.load_cert_chain(str(files.cert), str(files.key))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"the unit identity in {self.folder} cannot be used: {exc}") from None
        return context


def identity_dir(data_dir: Path) -> Path:
    return data_dir / IDENTITY_DIR


def provisioning_url(discovery_url: str) -> str:
    """The provisioning endpoint beside a discovery endpoint (`.../discovery` ->
    `.../provisioning`), as the reference cloud serves them."""
    return urljoin(discovery_url, PROVISIONING_PATH)


def check_https_url(url: str, what: str) -> str:
    """`url`, checked to be an https URL with a host.

    Raises:
        ConfigError: it is not.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ConfigError(f"{what} {url!r} is not an https:// URL")
    return url


def _common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("identity.key_unreadable", key=str(path), error=str(exc), next="new key")
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        log.warning("identity.key_not_p256", key=str(path), next="new key")
        return None
    return key


def load_identity(data_dir: Path) -> Identity | None:
    """The unit's identity, or None when it has none (never provisioned, or lost: a file gone
    or damaged, or a key that is not the certificate's; the reason is logged)."""
    folder = identity_dir(data_dir)
    if not (folder / CERT_FILE).exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())
        x509.load_pem_x509_certificates((folder / CA_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        log.warning("identity.lost", dir=str(folder), error=str(exc))
        return None
    key = _read_key(folder / KEY_FILE)
    system_id = _common_name(cert)
    if key is None or key.public_key() != cert.public_key() or not system_id:
        log.warning("identity.lost", dir=str(folder), error="the key is not the certificate's")
        return None
    try:
        discovery: str | None = (folder / DISCOVERY_FILE).read_text().strip() or None
    except FileNotFoundError:
        discovery = None
    if not (folder / SYSTEM_ID_FILE).exists():
        with contextlib.suppress(OSError):  # a convenience copy: a read-only disk may skip it
            atomic_write(folder / SYSTEM_ID_FILE, f"{system_id}\n".encode())
    return Identity(folder, system_id, discovery)


def _unit_key(folder: Path) -> ec.EllipticCurvePrivateKey:
    """The key to provision with: the one an unfinished attempt left, or a new one (0600)."""
    path = folder / KEY_FILE
    key = _read_key(path)
    if key is not None:
        return key
    key = ec.generate_private_key(ec.SECP256R1())
    write_private_key(path, key)
    return key


def make_csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR for `key`: the cloud names the unit, so the subject is only a placeholder; the
    signature is what matters (proof of possession)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aoscore unit")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def check_answer(
    body: object, key: ec.EllipticCurvePrivateKey
) -> tuple[str, x509.Certificate, bytes]:
    """The system id, certificate and CA PEM of a provisioning answer, checked: the
    certificate is for our key, names the system id and was signed by the CA given.

    Raises:
        ProvisioningError: the answer is not what a provisioning answer must be.
    """
    if not isinstance(body, dict):
        raise ProvisioningError("the provisioning answer is not a JSON object")
    fields = {str(k).lower(): v for k, v in body.items()}
    system_id, cert_pem, ca_pem = (fields.get(k) for k in ("systemid", "certificate", "ca"))
    if not (
        isinstance(system_id, str)
        and system_id
        and isinstance(cert_pem, str)
        and isinstance(ca_pem, str)
    ):
        raise ProvisioningError("the provisioning answer lacks systemId, certificate or ca")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        cas = x509.load_pem_x509_certificates(ca_pem.encode())
    except ValueError as exc:
        raise ProvisioningError(f"the provisioning answer holds a bad certificate: {exc}") from None
    if cert.public_key() != key.public_key():
        raise ProvisioningError("the certificate the cloud issued is not for this unit's key")
    if _common_name(cert) != system_id:
        raise ProvisioningError(f"the certificate does not name system id {system_id!r}")
    if not any(_issued_by(cert, ca) for ca in cas):
        raise ProvisioningError("the certificate was not signed by the CA the cloud sent")
    return system_id, cert, ca_pem.encode()


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


async def provision(
    url: str,
    token: str,
    data_dir: Path,
    *,
    cloud_ca: Path | None = None,
    discovery_url: str | None = None,
    timeout_s: float = 30.0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Identity:
    """Provision this unit at `url` with a one-use `token` and store its identity.

    Args:
        url: the cloud's provisioning endpoint (https).
        token: the one-use token the operator gave this unit.
        data_dir: the agent's data dir; the identity goes to its `identity/` folder.
        cloud_ca: a CA to trust for the cloud's HTTPS, besides the system's.
        discovery_url: remembered with the identity, so later starts need no option.
        transport: an httpx transport (tests).

    Raises:
        ProvisioningError: the cloud refused the token (wrong or used) or gave a bad answer.
        CertificateError: the cloud's certificate does not verify.
        LinkError: the cloud cannot be reached.
        ConfigError: `cloud_ca` cannot be read.
        LocalError: the identity cannot be written (the data dir is read-only or full).
    """
    folder = identity_dir(data_dir)
    try:
        make_dirs(folder, 0o700)
        os.chmod(folder, 0o700)
        key = _unit_key(folder)
    except OSError as exc:
        raise LocalError(f"cannot write the unit identity in {folder}: {exc}") from None
    body = {"token": token, "csr": make_csr(key).decode()}
    verify = client_context(cloud_ca)
    try:
        async with httpx.AsyncClient(
            verify=verify, timeout=timeout_s, transport=transport, trust_env=False
        ) as client:
            response = await client.post(url, json=body)
    except httpx.HTTPError as exc:
        if certificate_failure(exc):
            raise CertificateError(
                f"the cloud's certificate at {url} does not verify against the system's CAs"
                f"{f' or {cloud_ca}' if cloud_ca else ''} (--cloud-ca): {exc}"
            ) from exc
        raise LinkError(f"cannot reach the provisioning endpoint {url}: {exc}") from exc
    if response.status_code in (400, 401, 403, 404, 409):
        raise ProvisioningError(f"the cloud refused to provision this unit: {_reason(response)}")
    if response.status_code != 200:
        raise LinkError(f"provisioning at {url} answered HTTP {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        raise ProvisioningError("the provisioning answer is not JSON") from None
    system_id, cert, ca_pem = check_answer(answer, key)
    try:
        if discovery_url is not None:
            atomic_write(folder / DISCOVERY_FILE, f"{discovery_url}\n".encode())
        atomic_write(folder / CA_FILE, ca_pem)
        atomic_write(folder / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
        atomic_write(folder / SYSTEM_ID_FILE, f"{system_id}\n".encode())
    except OSError as exc:
        raise LocalError(
            f"the cloud provisioned this unit as {system_id}, but {folder} cannot keep it "
            f"({exc}); the token is used: provision again with a new one"
        ) from None
    log.info("identity.provisioned", unit=system_id, dir=str(folder))
    return Identity(folder, system_id, discovery_url)


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


async def ensure_identity(
    data_dir: Path,
    *,
    token: str | None = None,
    discovery_url: str | None = None,
    cloud_ca: Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Identity:
    """The unit's identity: the stored one, else a new one provisioned with `token`.

    A token given while an identity exists is not used (it may stay in the environment).

    Raises:
        ConfigError: no identity and no token, or no discovery URL to provision through.
        ProvisioningError, CertificateError, LinkError: as `provision`.
    """
    identity = load_identity(data_dir)
    if identity is not None:
        if token:
            log.info("identity.token_unused", unit=identity.system_id, reason="provisioned")
        if discovery_url and discovery_url != identity.discovery_url:
            identity = Identity(identity.folder, identity.system_id, discovery_url)
        return identity
    if not token:
        raise ConfigError(
            f"this unit has no identity in {identity_dir(data_dir)}: provision it with "
            "--provision-token (AOSCORE_PROVISION_TOKEN) and --discovery"
        )
    if not discovery_url:
        raise ConfigError("provisioning needs the cloud's --discovery URL")
    return await provision(
        provisioning_url(discovery_url),
        token,
        data_dir,
        cloud_ca=cloud_ca,
        discovery_url=discovery_url,
        transport=transport,
    )
