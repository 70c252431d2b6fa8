"""Provisioning: one-use tokens in, system ids and client certificates out.

An operator makes tokens (`aoscore cloud token new`) and gives one to each unit; the unit sends
it with a CSR, and the cloud, once it has checked the CSR (its signature proves the unit holds
the key), consumes the token, names the unit and signs its certificate. A unit that lost its
identity needs a new token and becomes a new unit: a system id is never handed out twice.

The registry lives in the cloud's SQLite file, `<cloud-dir>/cloud.db` (`db`: WAL,
synchronous=FULL, so a consumed token stays consumed across a power cut; a `provisioning.db`
of the previous version is imported into it once). Tokens are kept as their SHA-256 only: the
file does not hold a token anyone could use. Every request is one indexed lookup or one short
transaction, whatever the number of units; `cloud token new` in another process writes to the
same file safely.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import ProvisioningError
from ..logs import get_logger
from .ca import CloudCa, check_csr
from .db import DB_FILE as DB_FILE  # the registry shares the cloud's file
from .db import connect

log = get_logger("cloud.provisioning")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_system_id() -> str:
    """A system id no unit had: 64 random bits, also a valid DNS label (it is a SAN)."""
    return f"unit-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Provisioned:
    """What a provisioned unit is given."""

    system_id: str
    certificate_pem: str
    ca_pem: str


class Registrar:
    """The tokens and units of one cloud, in its SQLite file.

    Args:
        path: the cloud's SQLite file (made on first use).
        ca: the cloud CA, to sign the units' certificates; None for a registrar that only makes
            tokens (`cloud token new`).
        cert_days: how long a unit certificate is valid.
    """

    def __init__(self, path: Path, ca: CloudCa | None = None, *, cert_days: int = 365) -> None:
        self.path = path
        self.ca = ca
        self.cert_days = cert_days
        self._db = connect(path)

    def close(self) -> None:
        self._db.close()

    def new_tokens(self, count: int = 1) -> list[str]:
        """`count` new one-use provisioning tokens, stored (as hashes) before they are returned."""
        tokens = [secrets.token_urlsafe(24) for _ in range(count)]
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO tokens (hash, created) VALUES (?, ?)",
                [(_hash(t), now) for t in tokens],
            )
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.info("tokens.created", count=count)
        return tokens

    def provision(self, token: str, csr_pem: str | bytes) -> Provisioned:
        """Consume `token` and make a unit of the CSR's key.

        Raises:
            ValueError: the CSR is malformed, its signature does not verify, or its key is not
                EC P-256 (the token is not consumed).
            ProvisioningError: the token is unknown or was used already.
        """
        if self.ca is None:
            raise RuntimeError("this registrar was opened without the cloud CA")
        csr = check_csr(csr_pem)
        public_key = csr.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey), "check_csr lets EC keys only"
        system_id = new_system_id()
        cert = self.ca.issue_unit(system_id, public_key, self.cert_days)
        pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        serial, not_after = f"{cert.serial_number:x}", cert.not_valid_after_utc.timestamp()
        now = time.time()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            taken = self._db.execute(
                "UPDATE tokens SET used = ?, system_id = ? WHERE hash = ? AND used IS NULL",
                (now, system_id, _hash(token)),
            ).rowcount
            if taken != 1:
                self._db.execute("ROLLBACK")
                raise ProvisioningError(self._refusal(token))
            self._db.execute(
                "INSERT INTO units VALUES (?, ?, ?, ?, ?)",
                (system_id, now, serial, not_after, pem),
            )
            self._db.execute("COMMIT")
        except ProvisioningError:
            raise
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        log.info("unit.provisioned", unit=system_id, serial=serial)
        return Provisioned(system_id, pem, self.ca.ca_pem().decode())

    def _refusal(self, token: str) -> str:
        row = self._db.execute("SELECT used FROM tokens WHERE hash = ?", (_hash(token),)).fetchone()
        if row is None:
            return "the provisioning token is not known to this cloud"
        return "the provisioning token was used already: ask the operator for a new one"

    def is_unit(self, system_id: str) -> bool:
        """Whether `system_id` was provisioned here (one primary-key lookup)."""
        row = self._db.execute("SELECT 1 FROM units WHERE system_id = ?", (system_id,)).fetchone()
        return row is not None
