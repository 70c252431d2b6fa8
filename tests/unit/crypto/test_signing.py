"""Blob signature checks against test PKIs made by `init_pki`.

RSA key generation dominates the run time, so each PKI is made once per module.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.crypto import signing
from aoscore_py.crypto.pki import Pki, init_pki
from aoscore_py.crypto.signing import (
    ChainVerifier,
    SignAlg,
    SignatureError,
    fingerprint,
    hash_names_for,
    load_pem_certificates,
    parse_alg,
    sign_digest,
)
from aoscore_py.errors import AosCode, BlobError, ConfigError, Retry, classify
from aoscore_py.protocol.messages import Certificate, CertificateChain, SignInfo

RSA_ALGS = [
    f"RSA/{h}{p}" for h in ("SHA256", "SHA384", "SHA512") for p in ("", "/PKCS1v1_5", "/PSS")
]
ECDSA_ALGS = ["ECDSA/SHA256", "ECDSA/SHA384", "ECDSA/SHA512"]


def hashes_of(data: bytes) -> dict[str, bytes]:
    """Every hash a downloader might have computed while streaming `data`."""
    return {name: hashlib.new(name, data).digest() for name in ("sha256", "sha384", "sha512")}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verifier_for(pki: Pki, roots: Pki | None = None) -> ChainVerifier:
    return ChainVerifier([(roots or pki).root], pki.certificates(), [pki.chain()])


@pytest.fixture(scope="module")
def ec_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("ec"), "ec")


@pytest.fixture(scope="module")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("rsa"), "rsa")


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("other"), "ec")


# --- algorithms -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "expected"),
    [
        ("RSA/SHA256", SignAlg("RSA", "sha256", "PKCS1v1_5")),
        ("RSA/SHA384/PKCS1v1_5", SignAlg("RSA", "sha384", "PKCS1v1_5")),
        ("rsa/sha512/pss", SignAlg("RSA", "sha512", "PSS")),
        ("RSA/SHA256/pkcs1V1_5", SignAlg("RSA", "sha256", "PKCS1v1_5")),
        ("ECDSA/SHA256", SignAlg("ECDSA", "sha256", "")),
        ("ecdsa/Sha512", SignAlg("ECDSA", "sha512", "")),
    ],
)
def test_parse_alg_accepts_known_algorithms(alg: str, expected: SignAlg) -> None:
    assert parse_alg(alg) == expected


@pytest.mark.parametrize(
    "alg",
    [
        "FOO/SHA1",
        "RSA/SHA1",
        "RSA",
        "",
        "RSA/SHA256/OAEP",
        "RSA/SHA256/PSS/EXTRA",
        "ECDSA/SHA256/PSS",
        "ED25519/SHA512",
        "RSA//PSS",
    ],
)
def test_parse_alg_refuses_unknown_algorithms(alg: str) -> None:
    with pytest.raises(SignatureError, match="unknown signature algorithm") as info:
        parse_alg(alg)
    assert info.value.code == AosCode.NOT_SUPPORTED
    assert repr(alg) in info.value.message


def test_hash_names_for_adds_the_algorithm_hash() -> None:
    def info(alg: str) -> SignInfo:
        return SignInfo("c", alg, b"", datetime.now(UTC))

    assert hash_names_for(None) == ("sha256",)
    assert hash_names_for(info("RSA/SHA256/PSS")) == ("sha256",)
    assert hash_names_for(info("RSA/SHA384")) == ("sha256", "sha384")
    assert hash_names_for(info("ecdsa/sha512")) == ("sha256", "sha512")
    assert hash_names_for(info("FOO/SHA1")) == ("sha256",)


def test_fingerprint_is_uppercase_sha256_of_der(ec_pki: Pki) -> None:
    (signer, _) = ec_pki.certificates()
    assert fingerprint(ec_pki.signer) == hashlib.sha256(signer.certificate).hexdigest().upper()
    assert signer.fingerprint == fingerprint(ec_pki.signer)


# --- good signatures ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", RSA_ALGS)
def test_rsa_signatures_verify(rsa_pki: Pki, alg: str) -> None:
    hashes = hashes_of(b"layer bytes")
    verifier_for(rsa_pki).verify(digest_of(b"layer bytes"), rsa_pki.sign(hashes, alg), hashes)


@pytest.mark.parametrize("alg", ECDSA_ALGS)
def test_ecdsa_signatures_verify(ec_pki: Pki, alg: str) -> None:
    hashes = hashes_of(b"layer bytes")
    verifier_for(ec_pki).verify(digest_of(b"layer bytes"), ec_pki.sign(hashes, alg), hashes)


def test_only_the_needed_hash_is_required(rsa_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    sign_info = rsa_pki.sign(hashes, "RSA/SHA384/PSS")
    verifier_for(rsa_pki).verify(digest_of(b"x"), sign_info, {"sha384": hashes["sha384"]})


def test_fingerprints_match_case_insensitively(ec_pki: Pki) -> None:
    chain = ec_pki.chain()
    lower = CertificateChain(chain.name, tuple(fp.lower() for fp in chain.fingerprints))
    verifier = ChainVerifier([ec_pki.root], ec_pki.certificates(), [lower])
    hashes = hashes_of(b"x")
    verifier.verify(digest_of(b"x"), ec_pki.sign(hashes), hashes)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=512), alg=st.sampled_from(ECDSA_ALGS))
def test_any_bytes_signed_then_verified_pass(ec_pki: Pki, data: bytes, alg: str) -> None:
    hashes = hashes_of(data)
    verifier_for(ec_pki).verify(digest_of(data), ec_pki.sign(hashes, alg), hashes)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=64), bit=st.integers(0, 256 - 1), alg=st.sampled_from(RSA_ALGS[:3]))
def test_any_single_bit_flip_of_the_hash_fails(
    rsa_pki: Pki, data: bytes, bit: int, alg: str
) -> None:
    hashes = hashes_of(data)
    sign_info = rsa_pki.sign(hashes, alg)
    flipped = bytearray(hashes["sha256"])
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SignatureError, match="does not verify with certificate"):
        verifier_for(rsa_pki).verify(digest_of(data), sign_info, {"sha256": bytes(flipped)})


# --- bad signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RSA/SHA256", "RSA/SHA512/PSS"])
def test_wrong_rsa_signature_is_refused(rsa_pki: Pki, alg: str) -> None:
    hashes = hashes_of(b"x")
    sign_info = rsa_pki.sign(hashes, alg)
    # One bit flipped (a fixed last byte would leave 1 signature in 256 intact).
    broken = dataclasses.replace(
        sign_info, value=sign_info.value[:-1] + bytes([sign_info.value[-1] ^ 1])
    )
    with pytest.raises(SignatureError) as info:
        verifier_for(rsa_pki).verify(digest_of(b"x"), broken, hashes)
    assert info.value.code == AosCode.INVALID_CHECKSUM
    assert info.value.message == (
        f"signature of blob {digest_of(b'x')} does not verify with certificate "
        f"{rsa_pki.signer.subject.rfc4514_string()} (chain aoscore-test)"
    )


def test_wrong_ecdsa_signature_is_refused(ec_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    broken = dataclasses.replace(ec_pki.sign(hashes), value=b"\x30\x00")
    with pytest.raises(SignatureError, match="does not verify with certificate"):
        verifier_for(ec_pki).verify(digest_of(b"x"), broken, hashes)


@pytest.mark.parametrize("alg", ["RSA/SHA384", "RSA/SHA384/PSS"])
def test_hash_of_other_bytes_is_refused_rsa(rsa_pki: Pki, alg: str) -> None:
    sign_info = rsa_pki.sign(hashes_of(b"signed"), alg)
    with pytest.raises(SignatureError, match="does not verify"):
        verifier_for(rsa_pki).verify(digest_of(b"other"), sign_info, hashes_of(b"other"))


def test_hash_of_other_bytes_is_refused_ecdsa(ec_pki: Pki) -> None:
    sign_info = ec_pki.sign(hashes_of(b"signed"), "ECDSA/SHA384")
    with pytest.raises(SignatureError, match="does not verify"):
        verifier_for(ec_pki).verify(digest_of(b"other"), sign_info, hashes_of(b"other"))


def test_hash_of_wrong_length_is_refused(ec_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    sign_info = ec_pki.sign(hashes)
    with pytest.raises(SignatureError, match="does not verify"):
        verifier_for(ec_pki).verify(digest_of(b"x"), sign_info, {"sha256": b"short"})


def test_missing_hash_for_the_algorithm_is_refused(ec_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    sign_info = ec_pki.sign(hashes, "ECDSA/SHA512")
    with pytest.raises(SignatureError, match="no sha512 hash was computed"):
        verifier_for(ec_pki).verify(digest_of(b"x"), sign_info, {"sha256": hashes["sha256"]})


# --- chains ---------------------------------------------------------------------------------------


def test_unknown_chain_is_refused(ec_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    sign_info = dataclasses.replace(ec_pki.sign(hashes), chain_name="nope")
    with pytest.raises(SignatureError, match="certificate chain 'nope' is not in the desired"):
        verifier_for(ec_pki).verify(digest_of(b"x"), sign_info, hashes)


def test_fingerprint_missing_from_certificates_is_refused(ec_pki: Pki) -> None:
    chain = CertificateChain("aoscore-test", (ec_pki.chain().fingerprints[0], "DEADBEEF"))
    verifier = ChainVerifier([ec_pki.root], ec_pki.certificates(), [chain])
    hashes = hashes_of(b"x")
    with pytest.raises(SignatureError) as info:
        verifier.verify(digest_of(b"x"), ec_pki.sign(hashes), hashes)
    assert info.value.message == (
        "chain aoscore-test: certificate with fingerprint DEADBEEF is not in the desired status"
    )


def test_empty_chain_is_refused(ec_pki: Pki) -> None:
    verifier = ChainVerifier([ec_pki.root], ec_pki.certificates(), [CertificateChain("c", ())])
    hashes = hashes_of(b"x")
    sign_info = dataclasses.replace(ec_pki.sign(hashes), chain_name="c")
    with pytest.raises(SignatureError, match="certificate chain c lists no certificates"):
        verifier.verify(digest_of(b"x"), sign_info, hashes)


def test_certificate_that_is_not_der_is_refused(ec_pki: Pki) -> None:
    certificates = (Certificate(b"not a certificate", "AA"), ec_pki.certificates()[1])
    chain = CertificateChain("aoscore-test", ("aa", ec_pki.chain().fingerprints[1]))
    verifier = ChainVerifier([ec_pki.root], certificates, [chain])
    hashes = hashes_of(b"x")
    with pytest.raises(SignatureError, match="fingerprint aa is not valid DER"):
        verifier.verify(digest_of(b"x"), ec_pki.sign(hashes), hashes)


def test_chain_without_its_intermediate_is_refused(ec_pki: Pki) -> None:
    chain = CertificateChain("aoscore-test", ec_pki.chain().fingerprints[:1])
    verifier = ChainVerifier([ec_pki.root], ec_pki.certificates(), [chain])
    hashes = hashes_of(b"x")
    with pytest.raises(SignatureError, match="certificate chain aoscore-test does not verify"):
        verifier.verify(digest_of(b"x"), ec_pki.sign(hashes), hashes)


def test_chain_under_a_different_root_is_refused(ec_pki: Pki, other_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    if at > ec_pki.signer.not_valid_after_utc:
        at = ec_pki.signer.not_valid_before_utc + timedelta(days=2)
    sign_info = ec_pki.sign(hashes, timestamp=at)
    with pytest.raises(SignatureError) as info:
        verifier_for(ec_pki, roots=other_pki).verify(digest_of(b"x"), sign_info, hashes)
    assert info.value.message.startswith(
        f"certificate chain aoscore-test does not verify at {at:%Y-%m-%dT%H:%M:%SZ}: "
    )


@pytest.mark.parametrize(
    "moment",
    [
        lambda pki: pki.signer.not_valid_before_utc - timedelta(seconds=1),
        lambda pki: pki.signer.not_valid_after_utc + timedelta(days=1),
    ],
    ids=["before-not-before", "after-expiry"],
)
def test_timestamp_outside_validity_is_refused(
    ec_pki: Pki, moment: Callable[[Pki], datetime]
) -> None:
    hashes = hashes_of(b"x")
    at = moment(ec_pki)
    sign_info = ec_pki.sign(hashes, timestamp=at)
    with pytest.raises(SignatureError) as info:
        verifier_for(ec_pki).verify(digest_of(b"x"), sign_info, hashes)
    message = info.value.message
    assert message.startswith(
        f"certificate chain aoscore-test does not verify at {at:%Y-%m-%dT%H:%M:%SZ}"
    )
    assert "not valid at validation time" in message


def test_naive_timestamp_is_taken_as_utc(ec_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    at = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    verifier_for(ec_pki).verify(digest_of(b"x"), ec_pki.sign(hashes, timestamp=at), hashes)


def test_verified_chains_are_cached_per_name_and_time(
    ec_pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = signing.PolicyBuilder

    def counting() -> signing.PolicyBuilder:
        calls.append("build")
        return real()

    monkeypatch.setattr(signing, "PolicyBuilder", counting)
    verifier = verifier_for(ec_pki)
    at = datetime.now(UTC).replace(microsecond=0)
    for data in (b"a", b"b", b"c"):
        hashes = hashes_of(data)
        verifier.verify(digest_of(data), ec_pki.sign(hashes, timestamp=at), hashes)
    assert calls == ["build"]
    late = ec_pki.signer.not_valid_after_utc + timedelta(days=1)
    hashes = hashes_of(b"d")
    with pytest.raises(SignatureError, match="does not verify at"):
        verifier.verify(digest_of(b"d"), ec_pki.sign(hashes, timestamp=late), hashes)
    assert calls == ["build", "build"]


# --- what a signing certificate may carry ---------------------------------------------------------


def _with_signer(pki: Pki, extensions: list[x509.ExtensionType]) -> Pki:
    """`pki` with its signer replaced by one issued from a fresh CA under the same root shape:
    root -> intermediate -> signer, where the signer carries `extensions` on top of basic
    constraints and digital-signature key usage (what every signing certificate has)."""
    now = datetime.now(UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, by: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=1))
        )

    def ca(
        builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey
    ) -> x509.CertificateBuilder:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        return (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(usage, True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        )

    root_key, mid_key, signer_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = ca(issue("root", root_key, "root", root_key), root_key).sign(root_key, SHA256())
    mid = (
        ca(issue("mid", mid_key, "root", root_key), mid_key)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), False
        )
        .sign(root_key, SHA256())
    )
    usage = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
    builder = (
        issue("signer", signer_key, "mid", mid_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(usage, True)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, False)
    signer = builder.sign(mid_key, SHA256())
    return dataclasses.replace(
        pki, root=root, intermediate=mid, signer=signer, signer_key=signer_key
    )


@pytest.mark.parametrize(
    "extensions",
    [
        [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING])],
        [],
        [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE])],
        [
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.CODE_SIGNING]
            ),
            x509.SubjectAlternativeName([x509.DNSName("signer.example")]),
        ],
    ],
    ids=["codeSigning-only", "no-eku", "any-eku", "tls-client-style"],
)
def test_code_signing_certificates_without_san_or_aki_verify(
    ec_pki: Pki, extensions: list[x509.ExtensionType]
) -> None:
    pki = _with_signer(ec_pki, extensions)
    hashes = hashes_of(b"blob")
    verifier_for(pki).verify(digest_of(b"blob"), pki.sign(hashes), hashes)


def test_a_signer_whose_eku_excludes_code_signing_is_refused(ec_pki: Pki) -> None:
    pki = _with_signer(ec_pki, [x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])])
    hashes = hashes_of(b"blob")
    with pytest.raises(SignatureError, match=r"\(serverAuth\) does not allow codeSigning"):
        verifier_for(pki).verify(digest_of(b"blob"), pki.sign(hashes), hashes)


# --- keys and algorithms --------------------------------------------------------------------------


def test_leaf_key_type_must_match_the_algorithm(ec_pki: Pki, rsa_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    claims_rsa = dataclasses.replace(ec_pki.sign(hashes), alg="RSA/SHA256")
    with pytest.raises(SignatureError, match="holds an ECDSA key") as info:
        verifier_for(ec_pki).verify(digest_of(b"x"), claims_rsa, hashes)
    assert "'RSA/SHA256'" in info.value.message
    assert "chain aoscore-test" in info.value.message
    claims_ecdsa = dataclasses.replace(rsa_pki.sign(hashes), alg="ECDSA/SHA256")
    with pytest.raises(SignatureError, match="holds an RSA key"):
        verifier_for(rsa_pki).verify(digest_of(b"x"), claims_ecdsa, hashes)


def test_sign_digest_refuses_a_key_of_the_wrong_type(ec_pki: Pki, rsa_pki: Pki) -> None:
    digest = hashlib.sha256(b"x").digest()
    with pytest.raises(SignatureError, match="cannot sign with RSA"):
        sign_digest(ec_pki.signer_key, parse_alg("RSA/SHA256"), digest)
    with pytest.raises(SignatureError, match="cannot sign with ECDSA"):
        sign_digest(rsa_pki.signer_key, parse_alg("ECDSA/SHA256"), digest)
    with pytest.raises(SignatureError, match="cannot sign a sha256 hash"):
        sign_digest(ec_pki.signer_key, parse_alg("ECDSA/SHA256"), b"short")


def test_unknown_algorithm_is_not_supported(ec_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    sign_info = dataclasses.replace(ec_pki.sign(hashes), alg="FOO/SHA1")
    with pytest.raises(SignatureError) as info:
        verifier_for(ec_pki).verify(digest_of(b"x"), sign_info, hashes)
    assert info.value.code == AosCode.NOT_SUPPORTED
    assert info.value.message == "unknown signature algorithm 'FOO/SHA1'"


def test_no_roots_refuses_every_blob(ec_pki: Pki) -> None:
    hashes = hashes_of(b"x")
    verifier = ChainVerifier([], ec_pki.certificates(), [ec_pki.chain()])
    with pytest.raises(SignatureError, match="this unit has no trusted CA configured"):
        verifier.verify(digest_of(b"x"), ec_pki.sign(hashes), hashes)


def test_signature_error_is_a_permanent_blob_error() -> None:
    error = SignatureError("bad")
    assert isinstance(error, BlobError)
    assert error.code == AosCode.INVALID_CHECKSUM
    assert classify(error) is Retry.PERMANENT


# --- PEM ------------------------------------------------------------------------------------------


def test_load_pem_certificates_reads_a_bundle(ec_pki: Pki, other_pki: Pki) -> None:
    certs = load_pem_certificates(ec_pki.root_pem() + other_pki.root_pem())
    assert [fingerprint(c) for c in certs] == [
        fingerprint(ec_pki.root),
        fingerprint(other_pki.root),
    ]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "no PEM certificate found"),
        (b"hello", "no PEM certificate found"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "bad PEM certificate"),
    ],
)
def test_load_pem_certificates_refuses_bad_pem(data: bytes, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        load_pem_certificates(data)


def test_roots_read_from_pem_verify(ec_pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_bytes(ec_pki.root_pem())
    roots = load_pem_certificates((tmp_path / "ca.pem").read_bytes())
    verifier = ChainVerifier(roots, ec_pki.certificates(), [ec_pki.chain()])
    hashes = hashes_of(b"x")
    verifier.verify(digest_of(b"x"), ec_pki.sign(hashes), hashes)
