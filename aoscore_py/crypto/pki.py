"""A throw-away PKI for the reference cloud: root CA, intermediate CA and a blob signer.

`aoscore cloud pki init` creates it once; the reference cloud then signs blobs with the signer and
sends the signer and intermediate in each desired status, while units trust `root.pem`. The
certificates carry what the Web PKI's CA rules demand (LIBRARIES.md): basic constraints, key
usage and key identifiers on the CAs. The signer is a plain code-signing certificate: digital
signature key usage, a codeSigning EKU, an AKI, and no SAN (it names no host).
The CA keys are not kept: a new signer means a new PKI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeAlias

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aoscore_py.crypto.signing import (
    fingerprint,
    load_pem_certificates,
    parse_alg,
    sign_digest,
)
from aoscore_py.errors import ConfigError, LocalError
from aoscore_py.fsutil import atomic_write, fsync_dir
from aoscore_py.protocol.messages import Certificate, CertificateChain, SignInfo

KEY_TYPES = ("ec", "rsa")
CHAIN_NAME = "aoscore-test"
RSA_KEY_SIZE = 2048

ROOT_FILE = "root.pem"
INTERMEDIATE_FILE = "intermediate.pem"
SIGNER_FILE = "signer.pem"
SIGNER_KEY_FILE = "signer.key"
META_FILE = "pki.json"
PKI_FILES = (ROOT_FILE, INTERMEDIATE_FILE, SIGNER_FILE, SIGNER_KEY_FILE, META_FILE)

_DEFAULT_ALGS = {"ec": "ECDSA/SHA256", "rsa": "RSA/SHA256"}

PkiKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass
class Pki:
    """The test PKI's certificates and the signer's key, ready to sign blob hashes."""

    root: x509.Certificate
    intermediate: x509.Certificate
    signer: x509.Certificate
    signer_key: PkiKey = field(repr=False)
    key_type: str
    chain_name: str = CHAIN_NAME

    @property
    def alg(self) -> str:
        """The signature algorithm used when `sign` is given none."""
        return _DEFAULT_ALGS[self.key_type]

    def certificates(self) -> tuple[Certificate, ...]:
        """Signer and intermediate as a desired status carries them."""
        return tuple(
            Certificate(
                certificate=cert.public_bytes(serialization.Encoding.DER),
                fingerprint=fingerprint(cert),
            )
            for cert in (self.signer, self.intermediate)
        )

    def chain(self) -> CertificateChain:
        """The chain naming the signer, then the intermediate."""
        return CertificateChain(
            name=self.chain_name,
            fingerprints=(fingerprint(self.signer), fingerprint(self.intermediate)),
        )

    def sign(
        self,
        hashes_by_name: Mapping[str, bytes],
        alg: str | None = None,
        timestamp: datetime | None = None,
    ) -> SignInfo:
        """Sign a blob from its precomputed hashes, as the cloud does when serving blob URLs.

        Args:
            hashes_by_name: raw hash bytes by hashlib name; must hold the one `alg` needs.
            alg: a `signInfo.alg` such as `RSA/SHA384/PSS`; defaults to `self.alg`.
            timestamp: the trusted timestamp; defaults to now (UTC, whole seconds) because the
                wire format carries no fractions.

        Raises:
            SignatureError: `alg` is unknown or does not fit the signer's key.
            LocalError: `hashes_by_name` lacks the hash `alg` needs.
        """
        alg_name = alg or self.alg
        sign_alg = parse_alg(alg_name)
        digest = hashes_by_name.get(sign_alg.hash_name)
        if digest is None:
            raise LocalError(f"no {sign_alg.hash_name} hash given to sign with {alg_name!r}")
        if timestamp is None:
            timestamp = datetime.now(UTC).replace(microsecond=0)
        return SignInfo(
            chain_name=self.chain_name,
            alg=alg_name,
            value=sign_digest(self.signer_key, sign_alg, digest),
            trusted_timestamp=timestamp,
        )

    def root_pem(self) -> bytes:
        """The root CA in PEM, what a unit installs as its trusted CA."""
        return self.root.public_bytes(serialization.Encoding.PEM)


def _new_key(key_type: str) -> PkiKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)


def subject_name(organization: str, common_name: str) -> x509.Name:
    """O=organization, CN=common_name: how every certificate this project makes is named."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _name(common_name: str) -> x509.Name:
    return subject_name("aoscore-py test PKI", common_name)


def key_usage(*, ca: bool) -> x509.KeyUsage:
    """What a CA (signs certificates and CRLs) or a leaf (signs) may do with its key."""
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write an EC key as PKCS#8 PEM, durably, readable by its owner only (0600)."""
    # atomic_write's temporary file is created 0600, so the key is never readable by others;
    # the chmod states the intent should that ever change.
    atomic_write(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    os.chmod(path, 0o600)


def ec_root_ca(
    name: x509.Name, start: datetime, end: datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 root that may sign leaves only (path length 0), valid from
    `start` to `end`: the unit PKI's CA and the reference cloud's are made alike."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    subject: x509.Name,
    key: PkiKey,
    issuer: x509.Name,
    issuer_key: PkiKey,
    *,
    path_length: int | None,
    ca: bool,
    validity: tuple[datetime, datetime],
) -> x509.Certificate:
    """One certificate with the extensions the default verifier policy checks."""
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(key_usage(ca=ca), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer_key is not key:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def init_pki(
    folder: Path, key_type: str = "ec", *, force: bool = False, valid_days: int = 3650
) -> Pki:
    """Create a root CA, an intermediate CA and a signer, and store them in `folder`.

    `pki.json` is written last and removed first when replacing, so an interrupted run leaves a
    folder that `load_pki` refuses rather than a mix of two PKIs it would accept.

    Args:
        folder: where the PEM files and `pki.json` go (created if needed).
        key_type: "ec" (P-256) or "rsa" (2048 bits, to keep creation fast).
        force: replace a PKI already in `folder`.
        valid_days: validity of every certificate from now; each starts a day in the past so a
            unit whose clock lags a little still accepts it.

    Raises:
        ConfigError: unknown key type, non-positive validity, or a PKI is present without force.
    """
    if key_type not in KEY_TYPES:
        raise ConfigError(f"unknown PKI key type {key_type!r} (expected one of {KEY_TYPES})")
    if valid_days < 1:
        raise ConfigError(f"PKI validity must be at least one day, not {valid_days}")
    present = [name for name in PKI_FILES if (folder / name).exists()]
    if present and not force:
        raise ConfigError(
            f"{folder} already holds a PKI ({', '.join(present)}); refusing to overwrite it "
            "without force"
        )
    if (folder / META_FILE).exists():
        (folder / META_FILE).unlink()
        fsync_dir(folder)

    now = datetime.now(UTC).replace(microsecond=0)
    validity = (now - timedelta(days=1), now + timedelta(days=valid_days))
    root_key, intermediate_key, signer_key = (_new_key(key_type) for _ in range(3))
    root_name = _name("aoscore-py test root CA")
    intermediate_name = _name("aoscore-py test intermediate CA")
    root = _issue(
        root_name, root_key, root_name, root_key, path_length=1, ca=True, validity=validity
    )
    intermediate = _issue(
        intermediate_name,
        intermediate_key,
        root_name,
        root_key,
        path_length=0,
        ca=True,
        validity=validity,
    )
    signer = _issue(
        _name("aoscore-py test signer"),
        signer_key,
        intermediate_name,
        intermediate_key,
        path_length=None,
        ca=False,
        validity=validity,
    )
    pki = Pki(root, intermediate, signer, signer_key, key_type)
    _write_public(folder / ROOT_FILE, pki.root_pem())
    _write_public(folder / INTERMEDIATE_FILE, intermediate.public_bytes(serialization.Encoding.PEM))
    _write_public(folder / SIGNER_FILE, signer.public_bytes(serialization.Encoding.PEM))
    # atomic_write's temporary file is created 0600, so the key is never readable by others;
    # the chmod only states the intent should that ever change.
    atomic_write(
        folder / SIGNER_KEY_FILE,
        signer_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    os.chmod(folder / SIGNER_KEY_FILE, 0o600)
    meta = {
        "keyType": key_type,
        "chainName": pki.chain_name,
        "fingerprints": list(pki.chain().fingerprints),
    }
    _write_public(folder / META_FILE, orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n")
    return pki


def _write_public(path: Path, data: bytes) -> None:
    atomic_write(path, data)
    os.chmod(path, 0o644)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"PKI file {path} is missing (run `aoscore cloud pki init`)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read PKI file {path}: {exc}") from exc


def _read_certificate(path: Path) -> x509.Certificate:
    data = _read(path)
    try:
        certs = load_pem_certificates(data)
    except ConfigError as exc:
        raise ConfigError(f"PKI file {path}: {exc.message}") from exc
    if len(certs) != 1:
        raise ConfigError(f"PKI file {path} holds {len(certs)} certificates, expected one")
    return certs[0]


def load_pki(folder: Path) -> Pki:
    """Read a PKI made by `init_pki`, checking that its files belong together.

    Raises:
        ConfigError: a file is missing or broken, or the files do not match one another; the
            message names the file.
    """
    root = _read_certificate(folder / ROOT_FILE)
    intermediate = _read_certificate(folder / INTERMEDIATE_FILE)
    signer = _read_certificate(folder / SIGNER_FILE)
    key_path = folder / SIGNER_KEY_FILE
    try:
        signer_key = serialization.load_pem_private_key(_read(key_path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"PKI file {key_path}: not an unencrypted PEM private key") from exc
    meta_path = folder / META_FILE
    try:
        meta = orjson.loads(_read(meta_path))
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"PKI file {meta_path}: bad JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ConfigError(f"PKI file {meta_path}: expected a JSON object")
    key_type, chain_name = meta.get("keyType"), meta.get("chainName")
    if key_type not in KEY_TYPES:
        raise ConfigError(f"PKI file {meta_path}: keyType {key_type!r} is not one of {KEY_TYPES}")
    if not isinstance(chain_name, str) or not chain_name:
        raise ConfigError(f"PKI file {meta_path}: chainName must be a non-empty string")
    pki = Pki(root, intermediate, signer, signer_key, key_type, chain_name)
    if meta.get("fingerprints") != list(pki.chain().fingerprints):
        raise ConfigError(
            f"PKI file {meta_path}: fingerprints do not match {SIGNER_FILE} and {INTERMEDIATE_FILE}"
        )
    expected_key = ec.EllipticCurvePrivateKey if key_type == "ec" else rsa.RSAPrivateKey
    if not isinstance(signer_key, expected_key) or signer_key.public_key() != signer.public_key():
        raise ConfigError(f"PKI file {key_path}: key does not belong to {SIGNER_FILE}")
    return pki
