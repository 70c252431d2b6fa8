"""Blob signatures: parse `signInfo.alg`, sign a precomputed hash, verify it with a named chain.

Pure logic without file I/O. The downloader hashes each blob once while streaming it (sha256
always, plus the hash the signature algorithm names), so verification works on those hashes and
never reads the blob again. A chain is checked at the signature's trusted timestamp against the
unit's trusted CA with cryptography's X.509 verifier. Its CA checks are the Web PKI's; the signing
certificate is held to what a code-signing certificate carries, not a TLS client's: a SAN and an
AKI may be absent, and an EKU, when present, must allow codeSigning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from aoscore_py.errors import AosCode, BlobError, ConfigError
from aoscore_py.protocol.messages import Certificate, CertificateChain, SignInfo

_SIGNING_USAGES = frozenset(
    {ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
)

_EKU_NAMES = {
    ExtendedKeyUsageOID.SERVER_AUTH: "serverAuth",
    ExtendedKeyUsageOID.CLIENT_AUTH: "clientAuth",
    ExtendedKeyUsageOID.EMAIL_PROTECTION: "emailProtection",
    ExtendedKeyUsageOID.TIME_STAMPING: "timeStamping",
    ExtendedKeyUsageOID.OCSP_SIGNING: "OCSPSigning",
}


def _allows_code_signing(
    _policy: Policy, _cert: x509.Certificate, eku: x509.ExtendedKeyUsage | None
) -> None:
    """An EKU limits what a certificate may be used for: blob signing needs codeSigning."""
    if eku is not None and not _SIGNING_USAGES & set(eku):
        names = ", ".join(_EKU_NAMES.get(oid, oid.dotted_string) for oid in eku)
        raise ValueError(f"its extended key usage ({names}) does not allow codeSigning")


# Real signing certificates carry no SAN (they name no host) and need no clientAuth.
_SIGNER_POLICY = (
    ExtensionPolicy.webpki_defaults_ee()
    .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
    .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _allows_code_signing)
)

RSA = "RSA"
ECDSA = "ECDSA"
PKCS1V15 = "PKCS1v1_5"
PSS = "PSS"

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_PADDINGS = {"PKCS1V1_5": PKCS1V15, "PSS": PSS}


class SignatureError(BlobError):
    """A blob's signature, or the chain that should vouch for it, does not hold.

    invalidChecksum by default: like a digest mismatch, the same blob and chain will never
    verify, so the retry policy (errors.py) does not fetch it again for this desired status.
    """

    code = AosCode.INVALID_CHECKSUM


@dataclass(frozen=True)
class SignAlg:
    """A parsed `signInfo.alg`: key family, hashlib name of the hash, RSA padding ("" for ECDSA)."""

    key: str
    hash_name: str
    padding: str

    def hash_algorithm(self) -> hashes.HashAlgorithm:
        """The cryptography hash object matching `hash_name`."""
        return _HASHES[self.hash_name]()


def parse_alg(alg: str) -> SignAlg:
    """Parse `RSA/SHA256[/PKCS1v1_5|/PSS]` or `ECDSA/SHA256`, case-insensitively.

    Raises:
        SignatureError: (NOT_SUPPORTED) for any other algorithm, so the blob is refused clearly
            instead of being checked with a guess.
    """
    parts = alg.upper().split("/")
    hash_name = parts[1].lower() if len(parts) > 1 else ""
    if hash_name in _HASHES:
        if parts[0] == RSA and len(parts) == 2:
            return SignAlg(RSA, hash_name, PKCS1V15)
        if parts[0] == RSA and len(parts) == 3 and parts[2] in _PADDINGS:
            return SignAlg(RSA, hash_name, _PADDINGS[parts[2]])
        if parts[0] == ECDSA and len(parts) == 2:
            return SignAlg(ECDSA, hash_name, "")
    raise SignatureError(f"unknown signature algorithm {alg!r}", code=AosCode.NOT_SUPPORTED)


def hash_names_for(sign_info: SignInfo | None) -> tuple[str, ...]:
    """The hashlib names the downloader must compute for a blob signed with `sign_info`.

    An unknown algorithm asks for sha256 only; verification then fails with a clear message.
    """
    if sign_info is None:
        return ("sha256",)
    try:
        hash_name = parse_alg(sign_info.alg).hash_name
    except SignatureError:
        return ("sha256",)
    return ("sha256",) if hash_name == "sha256" else ("sha256", hash_name)


def fingerprint(cert: x509.Certificate) -> str:
    """Uppercase hex SHA-256 of the certificate's DER: how chains name their certificates."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest().upper()


def _rsa_padding(alg: SignAlg, *, signing: bool) -> padding.AsymmetricPadding:
    if alg.padding == PKCS1V15:
        return padding.PKCS1v15()
    # AUTO is refused when signing but reads any salt length back when verifying.
    salt = padding.PSS.DIGEST_LENGTH if signing else padding.PSS.AUTO
    return padding.PSS(mgf=padding.MGF1(alg.hash_algorithm()), salt_length=salt)


def _key_family(key: object) -> str:
    if isinstance(key, rsa.RSAPrivateKey | rsa.RSAPublicKey):
        return RSA
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return ECDSA
    return type(key).__name__


def sign_digest(private_key: PrivateKeyTypes, alg: SignAlg, digest: bytes) -> bytes:
    """Sign a hash computed elsewhere, so a large blob is never held or read twice.

    Raises:
        SignatureError: the key does not belong to `alg.key`, or `digest` has the wrong length.
    """
    family = _key_family(private_key)
    if family != alg.key:
        raise SignatureError(f"an {family} key cannot sign with {alg.key}/{alg.hash_name.upper()}")
    prehashed = Prehashed(alg.hash_algorithm())
    try:
        if isinstance(private_key, rsa.RSAPrivateKey):
            return private_key.sign(digest, _rsa_padding(alg, signing=True), prehashed)
        assert isinstance(private_key, ec.EllipticCurvePrivateKey), "key family checked above"
        return private_key.sign(digest, ec.ECDSA(prehashed))
    except ValueError as exc:
        raise SignatureError(f"cannot sign a {alg.hash_name} hash: {exc}") from exc


def _verify_digest(
    public_key: CertificatePublicKeyTypes, alg: SignAlg, value: bytes, digest: bytes
) -> None:
    """Raises InvalidSignature or ValueError (wrong hash length) like cryptography does."""
    prehashed = Prehashed(alg.hash_algorithm())
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(value, digest, _rsa_padding(alg, signing=False), prehashed)
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey), "caller checked the key family"
        public_key.verify(value, digest, ec.ECDSA(prehashed))


def format_time(when: datetime) -> str:
    """`2026-05-07T05:44:11Z`, the protocol's timestamp form (a naive time is taken as UTC)."""
    if when.tzinfo is not None:
        when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def load_pem_certificates(data: bytes) -> list[x509.Certificate]:
    """Parse every certificate of a PEM bundle, such as the unit's trusted CA file.

    Raises:
        ConfigError: the data holds no PEM certificate or a broken one.
    """
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError("no PEM certificate found (expected '-----BEGIN CERTIFICATE-----')")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ConfigError(f"bad PEM certificate: {exc}") from exc


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


class ChainVerifier:
    """Checks blob signatures against the chains and certificates of one desired status.

    Verified chains are cached per (chain name, trusted timestamp), so the many blobs of an
    update signed with one chain cost one path validation.

    Args:
        roots: the unit's trusted CA certificates; with none, every blob is refused.
        certificates: the desired status' certificates (DER), found by fingerprint.
        chains: the desired status' chains, signing certificate's fingerprint first.
    """

    def __init__(
        self,
        roots: Sequence[x509.Certificate],
        certificates: Sequence[Certificate],
        chains: Sequence[CertificateChain],
    ) -> None:
        self._store = Store(list(roots)) if roots else None
        self._certificates: dict[str, bytes] = {}
        for cert in certificates:
            self._certificates.setdefault(cert.fingerprint.upper(), cert.certificate)
        self._chains: dict[str, CertificateChain] = {}
        for chain in chains:
            self._chains.setdefault(chain.name, chain)
        self._verified: dict[tuple[str, datetime], x509.Certificate] = {}

    def verify(self, digest: str, sign_info: SignInfo, hashes_by_name: Mapping[str, bytes]) -> None:
        """Check that `sign_info` signs the blob whose hashes are given.

        Args:
            digest: the blob's `sha256:<hex>`, only to name it in errors.
            sign_info: the blob's signature, chain name, algorithm and trusted timestamp.
            hashes_by_name: raw hash bytes of the blob by hashlib name (see `hash_names_for`).

        Raises:
            SignatureError: the chain is unknown, incomplete or untrusted at the timestamp, the
                algorithm is unknown (NOT_SUPPORTED) or does not fit the key, a hash is missing,
                or the signature does not verify.
        """
        if self._store is None:
            raise SignatureError(
                f"cannot verify the signature of blob {digest}: "
                "this unit has no trusted CA configured"
            )
        leaf = self._verified_leaf(sign_info.chain_name, sign_info.trusted_timestamp)
        alg = parse_alg(sign_info.alg)
        name = sign_info.chain_name
        public_key = leaf.public_key()
        family = _key_family(public_key)
        if family != alg.key:
            raise SignatureError(
                f"chain {name}: certificate {_subject(leaf)} holds an {family} key, "
                f"but signature algorithm {sign_info.alg!r} of blob {digest} needs {alg.key}"
            )
        blob_hash = hashes_by_name.get(alg.hash_name)
        if blob_hash is None:
            raise SignatureError(
                f"blob {digest}: no {alg.hash_name} hash was computed "
                f"for signature algorithm {sign_info.alg!r}"
            )
        try:
            _verify_digest(public_key, alg, sign_info.value, blob_hash)
        except (InvalidSignature, ValueError) as exc:
            raise SignatureError(
                f"signature of blob {digest} does not verify with certificate "
                f"{_subject(leaf)} (chain {name})"
            ) from exc

    def _verified_leaf(self, name: str, at: datetime) -> x509.Certificate:
        """The chain's signing certificate, once its path to a trusted root holds at `at`."""
        key = (name, at if at.tzinfo is None else at.astimezone(UTC).replace(tzinfo=None))
        leaf = self._verified.get(key)
        if leaf is None:
            leaf, intermediates = self._load_chain(name)
            assert self._store is not None, "verify refuses to run without roots"
            verifier = (
                PolicyBuilder()
                .store(self._store)
                .time(at)
                .extension_policies(
                    ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_SIGNER_POLICY
                )
                .build_client_verifier()
            )
            try:
                verifier.verify(leaf, intermediates)
            except VerificationError as exc:
                raise SignatureError(
                    f"certificate chain {name} does not verify at {format_time(at)}: {exc}"
                ) from exc
            self._verified[key] = leaf
        return leaf

    def _load_chain(self, name: str) -> tuple[x509.Certificate, list[x509.Certificate]]:
        chain = self._chains.get(name)
        if chain is None:
            raise SignatureError(f"certificate chain {name!r} is not in the desired status")
        if not chain.fingerprints:
            raise SignatureError(f"certificate chain {name} lists no certificates")
        certs = []
        for fp in chain.fingerprints:
            der = self._certificates.get(fp.upper())
            if der is None:
                raise SignatureError(
                    f"chain {name}: certificate with fingerprint {fp} is not in the desired status"
                )
            try:
                certs.append(x509.load_der_x509_certificate(der))
            except ValueError as exc:
                raise SignatureError(
                    f"chain {name}: certificate with fingerprint {fp} is not valid DER: {exc}"
                ) from exc
        return certs[0], certs[1:]
