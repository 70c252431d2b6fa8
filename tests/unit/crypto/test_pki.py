"""The reference cloud's test PKI: what `init_pki` writes and what `load_pki` refuses."""

from __future__ import annotations

import hashlib
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from aoscore_py.crypto.pki import PKI_FILES, Pki, init_pki, load_pki
from aoscore_py.crypto.signing import ChainVerifier, fingerprint, load_pem_certificates
from aoscore_py.errors import ConfigError, LocalError


@pytest.fixture(scope="module")
def rsa_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rsa")
    init_pki(folder, "rsa")
    return folder


@pytest.fixture
def ec_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "pki"
    init_pki(folder)
    return folder


def same(a: Pki, b: Pki) -> bool:
    return (
        a.chain() == b.chain()
        and a.certificates() == b.certificates()
        and fingerprint(a.root) == fingerprint(b.root)
        and a.key_type == b.key_type
        and a.signer_key.public_key() == b.signer_key.public_key()
    )


def test_init_writes_every_file(ec_folder: Path) -> None:
    assert sorted(p.name for p in ec_folder.iterdir()) == sorted(PKI_FILES)
    assert stat.S_IMODE((ec_folder / "signer.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((ec_folder / "root.pem").stat().st_mode) == 0o644
    assert b"BEGIN PRIVATE KEY" in (ec_folder / "signer.key").read_bytes()
    pki = load_pki(ec_folder)
    meta = orjson.loads((ec_folder / "pki.json").read_bytes())
    assert meta == {
        "keyType": "ec",
        "chainName": "aoscore-test",
        "fingerprints": [fingerprint(pki.signer), fingerprint(pki.intermediate)],
    }


def test_load_returns_what_init_made(tmp_path: Path) -> None:
    made = init_pki(tmp_path)
    assert same(made, load_pki(tmp_path))


def test_ec_pki_uses_p256_and_ecdsa(ec_folder: Path) -> None:
    pki = load_pki(ec_folder)
    assert isinstance(pki.signer_key, ec.EllipticCurvePrivateKey)
    assert pki.signer_key.curve.name == "secp256r1"
    assert pki.alg == "ECDSA/SHA256"


def test_rsa_pki_uses_2048_bits_and_rsa(rsa_folder: Path) -> None:
    pki = load_pki(rsa_folder)
    assert isinstance(pki.signer_key, rsa.RSAPrivateKey)
    assert pki.signer_key.key_size == 2048
    assert pki.key_type == "rsa"
    assert pki.alg == "RSA/SHA256"
    hashes = {"sha256": hashlib.sha256(b"x").digest()}
    verifier = ChainVerifier([pki.root], pki.certificates(), [pki.chain()])
    verifier.verify("sha256:" + hashes["sha256"].hex(), pki.sign(hashes), hashes)


def test_certificates_carry_what_the_verifier_needs(ec_folder: Path) -> None:
    pki = load_pki(ec_folder)
    for ca in (pki.root, pki.intermediate):
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
        assert constraints.critical and constraints.value.ca
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
        assert usage.key_cert_sign and usage.crl_sign
        ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    pki.intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    leaf = pki.signer.extensions
    assert not leaf.get_extension_for_class(x509.BasicConstraints).value.ca
    assert leaf.get_extension_for_class(x509.KeyUsage).value.digital_signature
    leaf.get_extension_for_class(x509.AuthorityKeyIdentifier)
    leaf.get_extension_for_class(x509.SubjectKeyIdentifier)
    eku = leaf.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CODE_SIGNING]
    with pytest.raises(x509.ExtensionNotFound):
        leaf.get_extension_for_class(x509.SubjectAlternativeName)


def test_validity_starts_a_day_ago(tmp_path: Path) -> None:
    before = datetime.now(UTC)
    pki = init_pki(tmp_path, valid_days=10)
    for cert in (pki.root, pki.intermediate, pki.signer):
        start = cert.not_valid_before_utc
        assert before - timedelta(days=1, seconds=2) <= start <= before - timedelta(hours=23)
        assert cert.not_valid_after_utc - start == timedelta(days=11)


def test_certificates_and_chain_describe_signer_then_intermediate(ec_folder: Path) -> None:
    pki = load_pki(ec_folder)
    signer, intermediate = pki.certificates()
    assert x509.load_der_x509_certificate(signer.certificate) == pki.signer
    assert x509.load_der_x509_certificate(intermediate.certificate) == pki.intermediate
    assert pki.chain().name == "aoscore-test"
    assert pki.chain().fingerprints == (signer.fingerprint, intermediate.fingerprint)


def test_root_pem_round_trips(ec_folder: Path) -> None:
    pki = load_pki(ec_folder)
    assert load_pem_certificates(pki.root_pem()) == [pki.root]
    assert pki.root_pem() == (ec_folder / "root.pem").read_bytes()


def test_sign_defaults(ec_folder: Path) -> None:
    pki = load_pki(ec_folder)
    before = datetime.now(UTC).replace(microsecond=0)
    sign_info = pki.sign({"sha256": hashlib.sha256(b"x").digest()})
    assert sign_info.chain_name == "aoscore-test"
    assert sign_info.alg == "ECDSA/SHA256"
    assert sign_info.trusted_timestamp.microsecond == 0
    assert sign_info.trusted_timestamp.tzinfo is not None
    assert before <= sign_info.trusted_timestamp <= datetime.now(UTC)
    at = datetime(2027, 1, 1, tzinfo=UTC)
    assert pki.sign({"sha256": bytes(32)}, timestamp=at).trusted_timestamp == at


def test_sign_needs_the_hash_of_its_algorithm(ec_folder: Path) -> None:
    pki = load_pki(ec_folder)
    with pytest.raises(LocalError, match="no sha384 hash given"):
        pki.sign({"sha256": bytes(32)}, "ECDSA/SHA384")


def test_init_refuses_to_overwrite_without_force(ec_folder: Path) -> None:
    old = load_pki(ec_folder)
    with pytest.raises(ConfigError, match="already holds a PKI") as info:
        init_pki(ec_folder)
    assert str(ec_folder) in info.value.message
    assert same(old, load_pki(ec_folder))
    new = init_pki(ec_folder, force=True)
    assert fingerprint(new.root) != fingerprint(old.root)
    assert same(new, load_pki(ec_folder))


def test_init_refuses_a_partial_pki_without_force(tmp_path: Path) -> None:
    (tmp_path / "signer.key").write_bytes(b"left over")
    with pytest.raises(ConfigError, match=r"\(signer\.key\)"):
        init_pki(tmp_path)


@pytest.mark.parametrize(
    ("key_type", "valid_days", "problem"),
    [("dsa", 10, "unknown PKI key type 'dsa'"), ("ec", 0, "at least one day")],
)
def test_init_refuses_bad_arguments(
    tmp_path: Path, key_type: str, valid_days: int, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        init_pki(tmp_path, key_type, valid_days=valid_days)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", PKI_FILES)
def test_load_names_a_missing_file(ec_folder: Path, name: str) -> None:
    (ec_folder / name).unlink()
    with pytest.raises(ConfigError, match="is missing") as info:
        load_pki(ec_folder)
    assert str(ec_folder / name) in info.value.message


@pytest.mark.parametrize("name", PKI_FILES)
def test_load_names_a_broken_file(ec_folder: Path, name: str) -> None:
    (ec_folder / name).write_bytes(b"garbage")
    with pytest.raises(ConfigError) as info:
        load_pki(ec_folder)
    assert str(ec_folder / name) in info.value.message


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ([], "expected a JSON object"),
        ({"keyType": "dsa", "chainName": "c", "fingerprints": []}, "keyType 'dsa'"),
        ({"keyType": "ec", "chainName": "", "fingerprints": []}, "chainName"),
        ({"keyType": "ec", "chainName": "c", "fingerprints": ["AA", "BB"]}, "fingerprints"),
        ({"keyType": "rsa", "chainName": "c", "fingerprints": None}, "fingerprints"),
    ],
)
def test_load_checks_pki_json(ec_folder: Path, meta: object, problem: str) -> None:
    (ec_folder / "pki.json").write_bytes(orjson.dumps(meta))
    with pytest.raises(ConfigError, match=problem) as info:
        load_pki(ec_folder)
    assert "pki.json" in info.value.message


def test_load_refuses_files_of_two_pkis(ec_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_pki(other)
    (ec_folder / "signer.key").write_bytes((other / "signer.key").read_bytes())
    with pytest.raises(ConfigError, match=r"signer\.key: key does not belong to signer\.pem"):
        load_pki(ec_folder)
    (ec_folder / "signer.pem").write_bytes((other / "signer.pem").read_bytes())
    with pytest.raises(ConfigError, match=r"pki\.json: fingerprints do not match"):
        load_pki(ec_folder)


def test_load_refuses_a_key_of_the_wrong_type(ec_folder: Path) -> None:
    meta = orjson.loads((ec_folder / "pki.json").read_bytes())
    (ec_folder / "pki.json").write_bytes(orjson.dumps({**meta, "keyType": "rsa"}))
    with pytest.raises(ConfigError, match=r"signer\.key: key does not belong"):
        load_pki(ec_folder)
