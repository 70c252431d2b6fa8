"""The unit PKI: what `init_unit_pki` writes, that running it again is harmless, and that
`load_unit_pki` refuses files that do not belong together, naming them."""

from __future__ import annotations

import ipaddress
import re
import stat
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from aoscore_py.cli import cli
from aoscore_py.errors import ConfigError
from aoscore_py.iam.unitpki import (
    CA_KEY_FILE,
    META_FILE,
    UnitPki,
    init_unit_pki,
    load_unit_pki,
)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def pki(tmp_path: Path) -> UnitPki:
    return init_unit_pki(tmp_path / "pki", nodes=("node-1", "node-2"))


class TestWhatIsIssued:
    def test_the_ca_is_an_ec_p256_ca(self, pki: UnitPki) -> None:
        ca = cert(pki.ca)
        assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        key = ca.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert key.curve.name == "secp256r1"

    def test_the_cm_certificate_names_every_dns_name_and_address(self, pki: UnitPki) -> None:
        cm = cert(pki.cm.cert)
        sans = cm.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert sans.get_values_for_type(x509.DNSName) == ["localhost"]
        assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
        usages = cm.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usages) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert not cm.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        cm.verify_directly_issued_by(cert(pki.ca))

    def test_each_node_has_a_client_certificate_naming_it(self, pki: UnitPki) -> None:
        assert sorted(pki.nodes) == ["node-1", "node-2"]
        for node_id, files in pki.nodes.items():
            leaf = cert(files.cert)
            cn = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
            sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert cn == node_id
            assert sans.get_values_for_type(x509.DNSName) == [node_id]
            assert list(usages) == [ExtendedKeyUsageOID.CLIENT_AUTH]
            assert files.ca == pki.ca
            leaf.verify_directly_issued_by(cert(pki.ca))

    def test_keys_are_private_and_certificates_readable(self, pki: UnitPki) -> None:
        keys = [pki.folder / CA_KEY_FILE, pki.cm.key, *(f.key for f in pki.nodes.values())]
        certs = [pki.ca, pki.cm.cert, *(f.cert for f in pki.nodes.values())]
        assert {mode(k) for k in keys} == {0o600}
        assert {mode(c) for c in certs} == {0o644}

    def test_no_temporary_file_is_left(self, pki: UnitPki) -> None:
        assert [p for p in pki.folder.rglob("*") if p.name.endswith(".tmp")] == []

    def test_names_of_several_kinds(self, tmp_path: Path) -> None:
        pki = init_unit_pki(tmp_path, cm_names=("CM.Unit.Local", "::1", "10.0.0.5"), nodes=())
        sans = cert(pki.cm.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)
        assert sans.value.get_values_for_type(x509.DNSName) == ["cm.unit.local"]
        assert sans.value.get_values_for_type(x509.IPAddress) == [
            ipaddress.ip_address("::1"),
            ipaddress.ip_address("10.0.0.5"),
        ]
        assert pki.nodes == {}


class TestRunningAgain:
    def test_the_same_call_changes_nothing(self, pki: UnitPki) -> None:
        before = snapshot(pki.folder)
        again = init_unit_pki(pki.folder, nodes=("node-1", "node-2"))
        assert snapshot(pki.folder) == before
        assert again == pki

    def test_a_new_node_gets_a_certificate_from_the_same_ca(self, pki: UnitPki) -> None:
        before = snapshot(pki.folder)
        again = init_unit_pki(pki.folder, nodes=("node-3",))
        after = snapshot(pki.folder)
        assert sorted(again.nodes) == ["node-1", "node-2", "node-3"]
        unchanged = ("ca.pem", "ca.key", "cm.pem", "cm.key", "nodes/node-1.pem", "nodes/node-2.key")
        assert all(after[name] == before[name] for name in unchanged)
        cert(again.node("node-3").cert).verify_directly_issued_by(cert(pki.ca))
        assert load_unit_pki(pki.folder) == again

    def test_new_cm_names_reissue_the_cm_certificate_only(self, pki: UnitPki) -> None:
        before = snapshot(pki.folder)
        again = init_unit_pki(pki.folder, cm_names=("cm.local",), nodes=())
        after = snapshot(pki.folder)
        assert after["cm.pem"] != before["cm.pem"]
        assert after["ca.pem"] == before["ca.pem"]
        assert after["nodes/node-1.pem"] == before["nodes/node-1.pem"]
        assert again.cm_names == ("cm.local",)
        assert load_unit_pki(pki.folder).cm_names == ("cm.local",)

    def test_force_makes_a_new_ca_and_drops_the_old_nodes(self, pki: UnitPki) -> None:
        old_ca = pki.ca.read_bytes()
        again = init_unit_pki(pki.folder, nodes=("node-9",), force=True)
        assert again.ca.read_bytes() != old_ca
        assert sorted(p.name for p in (pki.folder / "nodes").iterdir()) == [
            "node-9.key",
            "node-9.pem",
        ]
        assert load_unit_pki(pki.folder) == again

    def test_an_interrupted_run_is_refused_without_force(self, pki: UnitPki) -> None:
        (pki.folder / META_FILE).unlink()
        with pytest.raises(ConfigError, match=r"incomplete unit PKI.*without force"):
            init_unit_pki(pki.folder)
        with pytest.raises(ConfigError, match=re.escape(str(pki.folder / META_FILE))):
            load_unit_pki(pki.folder)
        assert sorted(init_unit_pki(pki.folder, force=True).nodes) == [
            "node-1",
            "node-2",
            "node-3",
        ]


class TestLoading:
    def test_load_gives_what_init_gave(self, pki: UnitPki) -> None:
        assert load_unit_pki(pki.folder) == pki

    def test_a_missing_file_is_named(self, pki: UnitPki) -> None:
        pki.node("node-2").key.unlink()
        with pytest.raises(ConfigError, match=re.escape(f"{pki.node('node-2').key} is missing")):
            load_unit_pki(pki.folder)

    def test_a_certificate_from_another_ca_is_named(self, pki: UnitPki, tmp_path: Path) -> None:
        other = init_unit_pki(tmp_path / "other", nodes=("node-1",))
        pki.node("node-1").cert.write_bytes(other.node("node-1").cert.read_bytes())
        pki.node("node-1").key.write_bytes(other.node("node-1").key.read_bytes())
        with pytest.raises(ConfigError, match=r"node-1\.pem was not issued by the CA"):
            load_unit_pki(pki.folder)

    def test_a_key_of_another_certificate_is_named(self, pki: UnitPki) -> None:
        pki.cm.key.write_bytes(pki.node("node-1").key.read_bytes())
        with pytest.raises(ConfigError, match=re.escape(f"{pki.cm.key}: key does not belong")):
            load_unit_pki(pki.folder)

    def test_a_file_that_is_not_pem_is_named(self, pki: UnitPki) -> None:
        pki.ca.write_text("junk\n")
        with pytest.raises(ConfigError, match=re.escape(f"{pki.ca}: no PEM certificate")):
            load_unit_pki(pki.folder)

    def test_a_meta_file_for_another_ca_is_refused(self, pki: UnitPki) -> None:
        meta = orjson.loads((pki.folder / META_FILE).read_bytes())
        meta["caFingerprint"] = "00"
        (pki.folder / META_FILE).write_bytes(orjson.dumps(meta))
        with pytest.raises(ConfigError, match="caFingerprint does not match"):
            load_unit_pki(pki.folder)

    def test_an_unknown_node_is_a_config_error_with_the_fix(self, pki: UnitPki) -> None:
        with pytest.raises(ConfigError, match=r"no certificate for node 'node-7'.*--node node-7"):
            pki.node("node-7")


class TestBadArguments:
    @pytest.mark.parametrize("node_id", ["", "-x", "a/b", "../up", "a b", "x" * 65])
    def test_node_ids_must_be_fit_for_a_file_name(self, tmp_path: Path, node_id: str) -> None:
        with pytest.raises(ConfigError, match="node id"):
            init_unit_pki(tmp_path, nodes=(node_id,))
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.parametrize("name", ["a b", "", "x..y", "ünï"])
    def test_cm_names_must_be_names_or_addresses(self, tmp_path: Path, name: str) -> None:
        with pytest.raises(ConfigError, match="CM name"):
            init_unit_pki(tmp_path, cm_names=(name,))

    def test_at_least_one_cm_name(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="at least one name"):
            init_unit_pki(tmp_path, cm_names=())


class TestCommand:
    def test_init_prints_every_path(self, tmp_path: Path) -> None:
        folder = tmp_path / "pki"
        args = ["unit", "pki", "init", "--dir", str(folder), "--node", "n1", "--cm-name", "cm"]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0, result.output
        lines = [line.split() for line in result.output.splitlines()]
        printed = {" ".join(parts[:-1]): Path(parts[-1]) for parts in lines}
        assert printed == {
            "ca": folder / "ca.pem",
            "cm cert": folder / "cm.pem",
            "cm key": folder / "cm.key",
            "n1 cert": folder / "nodes" / "n1.pem",
            "n1 key": folder / "nodes" / "n1.key",
        }
        assert all(path.is_file() for path in printed.values())
        assert load_unit_pki(folder).cm_names == ("cm",)

    def test_defaults_and_a_bad_node_id(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(cli, ["unit", "pki", "init", "--dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        assert sorted(load_unit_pki(tmp_path).nodes) == ["node-1", "node-2", "node-3"]
        args = ["unit", "pki", "init", "--dir", str(tmp_path / "x"), "--node", "a/b"]
        bad = CliRunner().invoke(cli, args)
        assert bad.exit_code == 2
        assert "node id 'a/b'" in bad.output
