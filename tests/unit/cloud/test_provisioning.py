"""Provisioning on the cloud's side: one-use tokens, the CSR's proof of possession, the
certificate a unit gets, and the bearer tokens discovery hands out."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from aoscore_py.cloud.bearer import BearerTokens, load_key
from aoscore_py.cloud.ca import check_csr, ensure_ca
from aoscore_py.cloud.provisioning import DB_FILE, Registrar
from aoscore_py.errors import ConfigError, ProvisioningError


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "aoscore unit")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def registrar(tmp_path: Path) -> Registrar:
    return Registrar(tmp_path / DB_FILE, ensure_ca(tmp_path / "tls"))


class TestTokens:
    def test_a_token_provisions_one_unit_once(self, registrar: Registrar) -> None:
        (token,) = registrar.new_tokens()
        unit = registrar.provision(token, _csr(_p256()))
        assert registrar.is_unit(unit.system_id)
        with pytest.raises(ProvisioningError, match="used already"):
            registrar.provision(token, _csr(_p256()))

    def test_an_unknown_token_is_refused(self, registrar: Registrar) -> None:
        registrar.new_tokens()
        with pytest.raises(ProvisioningError, match="not known"):
            registrar.provision("guessed", _csr(_p256()))

    def test_each_unit_gets_its_own_system_id(self, registrar: Registrar) -> None:
        tokens = registrar.new_tokens(20)
        ids = {registrar.provision(t, _csr(_p256())).system_id for t in tokens}
        assert len(ids) == 20

    def test_the_file_keeps_no_usable_token(self, registrar: Registrar, tmp_path: Path) -> None:
        tokens = registrar.new_tokens(3)
        registrar.close()
        stored = b"".join(p.read_bytes() for p in tmp_path.glob(f"{DB_FILE}*"))
        assert not any(t.encode() in stored for t in tokens)

    def test_a_consumed_token_stays_consumed_for_another_process(
        self, registrar: Registrar, tmp_path: Path
    ) -> None:
        (token,) = registrar.new_tokens()
        registrar.provision(token, _csr(_p256()))
        other = Registrar(tmp_path / DB_FILE, ensure_ca(tmp_path / "tls"))
        with pytest.raises(ProvisioningError, match="used already"):
            other.provision(token, _csr(_p256()))


class TestCsr:
    def test_a_bad_csr_does_not_consume_the_token(self, registrar: Registrar) -> None:
        (token,) = registrar.new_tokens()
        with pytest.raises(ValueError, match="not a PEM"):
            registrar.provision(token, b"not a csr")
        registrar.provision(token, _csr(_p256()))

    def test_a_forged_signature_is_no_proof_of_possession(self) -> None:
        csr = x509.load_pem_x509_csr(_csr(_p256()))
        der = bytearray(csr.public_bytes(serialization.Encoding.DER))
        der[-3] ^= 0x01  # inside the signature
        forged = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
        with pytest.raises(ValueError, match="signature"):
            check_csr(forged)

    def test_only_p256_keys_are_taken(self) -> None:
        with pytest.raises(ValueError, match="P-256"):
            check_csr(_csr(ec.generate_private_key(ec.SECP384R1())))
        with pytest.raises(ValueError, match="P-256"):
            check_csr(_csr(rsa.generate_private_key(public_exponent=65537, key_size=2048)))


class TestCertificate:
    def test_the_unit_certificate_names_it_and_chains_to_the_ca(self, registrar: Registrar) -> None:
        key = _p256()
        unit = registrar.provision(registrar.new_tokens()[0], _csr(key))
        cert = x509.load_pem_x509_certificate(unit.certificate_pem.encode())
        ca = x509.load_pem_x509_certificate(unit.ca_pem.encode())
        assert cert.public_key() == key.public_key()
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == unit.system_id
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
        verifier = PolicyBuilder().store(Store([ca])).build_client_verifier()
        verified = verifier.verify(cert, [])
        assert x509.DNSName(unit.system_id) in verified.subjects

    def test_the_ca_is_kept(self, tmp_path: Path) -> None:
        first = ensure_ca(tmp_path / "tls")
        assert ensure_ca(tmp_path / "tls").cert == first.cert
        assert (tmp_path / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600

    def test_a_ca_key_of_another_ca_is_refused(self, tmp_path: Path) -> None:
        ensure_ca(tmp_path / "a")
        ensure_ca(tmp_path / "b")
        (tmp_path / "a" / "ca.key").write_bytes((tmp_path / "b" / "ca.key").read_bytes())
        with pytest.raises(ConfigError, match="does not belong"):
            ensure_ca(tmp_path / "a")


class TestBearer:
    def test_a_token_names_its_unit_until_it_expires(self) -> None:
        now = [1000.0]
        tokens = BearerTokens(b"k" * 32, ttl_s=60, clock=lambda: now[0])
        token = tokens.issue("unit-1")
        assert tokens.check(token) == "unit-1"
        now[0] += 61
        assert tokens.check(token) is None

    def test_a_changed_or_foreign_token_is_refused(self) -> None:
        tokens = BearerTokens(b"k" * 32)
        token = tokens.issue("unit-1")
        other = BearerTokens(b"o" * 32).issue("unit-1")
        name, expiry, mac = token.split(".")
        forged = f"{BearerTokens(b'x' * 32).issue('unit-2').split('.')[0]}.{expiry}.{mac}"
        longer = f"{name}.{int(expiry) + 3600}.{mac}"
        for bad in (other, forged, longer, "", "a.b", "a.b.c", "a.1.!!"):
            assert tokens.check(bad) is None, bad

    def test_the_key_is_made_once_and_kept_private(self, tmp_path: Path) -> None:
        key = load_key(tmp_path)
        assert load_key(tmp_path) == key and len(key) == 32
        assert (tmp_path / "token.key").stat().st_mode & 0o777 == 0o600
