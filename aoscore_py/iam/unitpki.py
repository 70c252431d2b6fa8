"""A unit PKI for the CM<->SM link: a unit CA, the CM's server certificate, one per node.

Until provisioning issues real certificates (a later issue), development, tests and the
power-cut laboratory need certificates that make the link's mutual TLS real. This module makes
them, in one folder:

    ca.pem  ca.key              the unit CA (EC P-256); its key stays so nodes can be added
    cm.pem  cm.key              the CM: SANs for every name and address SMs dial;
                                serverAuth and clientAuth
    nodes/<id>.pem  <id>.key    one per node: CN and SAN DNS = the node id; clientAuth
    unitpki.json                what the folder holds, written last

Keys are 0600 and every file goes through temp, fsync, rename (`fsutil.atomic_write`), and
`unitpki.json` is written last (and removed first when replacing), so an interrupted run leaves
a folder `load_unit_pki` refuses, never a mix it would accept. Running `init_unit_pki` again is
harmless: what is there and asked for again is kept as it is, a node not there yet gets its
certificate from the same CA, a changed list of CM names gets a new CM certificate (the nodes
keep theirs); only `force` makes a new CA.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from ..crypto.pki import ec_root_ca, key_usage, subject_name, write_private_key
from ..crypto.signing import fingerprint, load_pem_certificates
from ..errors import ConfigError
from ..fsutil import atomic_write, fsync_dir
from .tls import TlsFiles

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CM_FILE = "cm.pem"
CM_KEY_FILE = "cm.key"
NODES_DIR = "nodes"
META_FILE = "unitpki.json"

DEFAULT_CM_NAMES = ("localhost", "127.0.0.1")
DEFAULT_NODES = ("node-1", "node-2", "node-3")
_ORGANIZATION = "aoscore-py unit PKI"
_NODE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DNS_NAME = re.compile(r"^[A-Za-z0-9*_]([A-Za-z0-9_.-]{0,252})$")


@dataclass(frozen=True)
class UnitPki:
    """Where a unit PKI's files are, and what they were issued for."""

    folder: Path
    cm: TlsFiles  # the CM's server (and client) certificate, with the unit CA
    nodes: Mapping[str, TlsFiles] = field(hash=False)  # node id -> that node's files
    cm_names: tuple[str, ...] = ()
    ca_fingerprint: str = ""

    @property
    def ca(self) -> Path:
        return self.cm.ca

    def node(self, node_id: str) -> TlsFiles:
        """The files node `node_id` dials its CM with.

        Raises:
            ConfigError: the PKI has no certificate for this node.
        """
        files = self.nodes.get(node_id)
        if files is None:
            raise ConfigError(
                f"the unit PKI in {self.folder} has no certificate for node {node_id!r} "
                f"(it has {', '.join(sorted(self.nodes)) or 'none'}); add it with "
                f"`aoscore unit pki init --dir {self.folder} --node {node_id}`"
            )
        return files

    def paths(self) -> list[tuple[str, Path]]:
        """(label, path) for every file, as the command line prints them."""
        out = [("ca", self.cm.ca), ("cm cert", self.cm.cert), ("cm key", self.cm.key)]
        for node_id in sorted(self.nodes):
            files = self.nodes[node_id]
            out += [(f"{node_id} cert", files.cert), (f"{node_id} key", files.key)]
        return out


def check_node_id(node_id: str) -> str:
    """A node id fit for a certificate's CN and a file name.

    Raises:
        ConfigError: not 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.
    """
    if not _NODE_ID.match(node_id):
        raise ConfigError(
            f"node id {node_id!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return node_id


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS and IP SANs: a name that parses as an address is an IP SAN (clients match an
    address they dial against IP SANs only)."""
    out: list[x509.GeneralName] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
            continue
        except ValueError:
            pass
        if not _DNS_NAME.match(name) or ".." in name:
            raise ConfigError(f"CM name {name!r} is neither an IP address nor a DNS name")
        out.append(x509.DNSName(name.lower()))
    return out


def _name(common_name: str) -> x509.Name:
    return subject_name(_ORGANIZATION, common_name)


def _validity(valid_days: int) -> tuple[datetime, datetime]:
    # A day in the past, so a node whose clock lags a little still accepts the certificates.
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(days=1), now + timedelta(days=valid_days)


def _new_ca(valid_days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    return ec_root_ca(_name("aoscore-py unit CA"), *_validity(valid_days))


def _issue_leaf(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    sans: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
    valid_days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start, end = _validity(valid_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    atomic_write(path, cert.public_bytes(serialization.Encoding.PEM))
    os.chmod(path, 0o644)


def _files(folder: Path, cm_names: Iterable[str], nodes: Iterable[str], ca_fp: str) -> UnitPki:
    ca = folder / CA_FILE
    return UnitPki(
        folder=folder,
        cm=TlsFiles(ca, folder / CM_FILE, folder / CM_KEY_FILE),
        nodes={
            node_id: TlsFiles(
                ca, folder / NODES_DIR / f"{node_id}.pem", folder / NODES_DIR / f"{node_id}.key"
            )
            for node_id in nodes
        },
        cm_names=tuple(cm_names),
        ca_fingerprint=ca_fp,
    )


def init_unit_pki(
    folder: Path,
    cm_names: Iterable[str] = DEFAULT_CM_NAMES,
    nodes: Iterable[str] = DEFAULT_NODES,
    *,
    force: bool = False,
    valid_days: int = 3650,
) -> UnitPki:
    """Make (or complete) a unit PKI in `folder`.

    Args:
        folder: where the files go (created if needed).
        cm_names: the host names and addresses SMs dial the CM by (its certificate's SANs).
        nodes: the node ids to issue client certificates for.
        force: make a new CA and every certificate again (node certificates not asked for
            are removed: they would come from the old CA).
        valid_days: validity of new certificates from now (each starts a day in the past).

    Returns:
        The PKI: every node asked for now, and any issued by an earlier run.

    Raises:
        ConfigError: a bad node id or CM name, no CM name, a non-positive validity, or a
            folder holding an incomplete PKI (an interrupted run) without `force`.
    """
    names = tuple(dict.fromkeys(cm_names))
    wanted = tuple(dict.fromkeys(check_node_id(n) for n in nodes))
    if not names:
        raise ConfigError("the CM certificate needs at least one name (--cm-name)")
    sans = _general_names(names)
    if valid_days < 1:
        raise ConfigError(f"certificate validity must be at least one day, not {valid_days}")
    folder = Path(folder)
    meta_path = folder / META_FILE

    if meta_path.exists() and not force:
        current = load_unit_pki(folder)
        ca = _read_certificate(current.ca)
        ca_key = _read_key(folder / CA_KEY_FILE, ca)
        reissue_cm = set(_general_names(current.cm_names)) != set(sans)
        missing = [n for n in wanted if n not in current.nodes]
        if not reissue_cm and not missing:
            return current
        cm_names_now = names if reissue_cm else current.cm_names
        node_ids = [*current.nodes, *missing]
    else:
        present = [
            p.name for p in (folder / n for n in (CA_FILE, CA_KEY_FILE, CM_FILE)) if p.exists()
        ]
        if present and not force:
            raise ConfigError(
                f"{folder} holds an incomplete unit PKI ({', '.join(present)} without "
                f"{META_FILE}); refusing to overwrite it without force"
            )
        if meta_path.exists():
            meta_path.unlink()
            fsync_dir(folder)
        nodes_dir = folder / NODES_DIR
        if nodes_dir.is_dir():
            for stale in nodes_dir.iterdir():
                if stale.suffix in (".pem", ".key"):
                    stale.unlink()
        ca, ca_key = _new_ca(valid_days)
        write_private_key(folder / CA_KEY_FILE, ca_key)
        _write_cert(folder / CA_FILE, ca)
        reissue_cm, missing = True, list(wanted)
        cm_names_now, node_ids = names, list(wanted)

    pki = _files(folder, cm_names_now, node_ids, fingerprint(ca))
    if reissue_cm:
        server_auth = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        cert, key = _issue_leaf(ca, ca_key, names[0], sans, server_auth, valid_days)
        write_private_key(pki.cm.key, key)
        _write_cert(pki.cm.cert, cert)
    for node_id in missing:
        files = pki.nodes[node_id]
        cert, key = _issue_leaf(
            ca,
            ca_key,
            node_id,
            [x509.DNSName(node_id)],
            [ExtendedKeyUsageOID.CLIENT_AUTH],
            valid_days,
        )
        write_private_key(files.key, key)
        _write_cert(files.cert, cert)
    meta = {"caFingerprint": pki.ca_fingerprint, "cmNames": list(cm_names_now), "nodes": node_ids}
    atomic_write(meta_path, orjson.dumps(meta, option=orjson.OPT_INDENT_2) + b"\n")
    os.chmod(meta_path, 0o644)
    return pki


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"unit PKI file {path} is missing (run `aoscore unit pki init`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read unit PKI file {path}: {exc}") from exc


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        certs = load_pem_certificates(_read(path))
    except ConfigError as exc:
        raise ConfigError(f"unit PKI file {path}: {exc.message}") from exc
    if len(certs) != 1:
        raise ConfigError(f"unit PKI file {path} holds {len(certs)} certificates, expected one")
    return certs[0]


def _read_key(path: Path, cert: x509.Certificate) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"unit PKI file {path}: not an unencrypted PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise ConfigError(f"unit PKI file {path}: key does not belong to {cert.subject}")
    return key


def _check_leaf(files: TlsFiles, ca: x509.Certificate) -> None:
    cert = _read_certificate(files.cert)
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError) as exc:
        raise ConfigError(
            f"unit PKI file {files.cert} was not issued by the CA in {files.ca}"
        ) from exc
    _read_key(files.key, cert)


def load_unit_pki(folder: Path) -> UnitPki:
    """Read a unit PKI made by `init_unit_pki`, checking that its files belong together (each
    certificate issued by the CA, each key its certificate's).

    Raises:
        ConfigError: a file is missing or broken, or the files do not match; the message
            names the file.
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    try:
        meta = orjson.loads(_read(meta_path))
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"unit PKI file {meta_path}: bad JSON: {exc}") from exc
    names, nodes = (meta.get("cmNames"), meta.get("nodes")) if isinstance(meta, dict) else (0, 0)
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise ConfigError(f"unit PKI file {meta_path}: cmNames must be a list of names")
    if not (isinstance(nodes, list) and all(isinstance(n, str) for n in nodes)):
        raise ConfigError(f"unit PKI file {meta_path}: nodes must be a list of node ids")
    for node_id in nodes:
        check_node_id(node_id)
    ca = _read_certificate(folder / CA_FILE)
    pki = _files(folder, names, nodes, fingerprint(ca))
    if meta.get("caFingerprint") != pki.ca_fingerprint:
        raise ConfigError(f"unit PKI file {meta_path}: caFingerprint does not match {CA_FILE}")
    _check_leaf(pki.cm, ca)
    for files in pki.nodes.values():
        _check_leaf(files, ca)
    return pki
