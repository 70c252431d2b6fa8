"""The reference cloud's durable state, under one folder:

cloud.db      units, desired statuses (with their seq), the unit's answer to each one sent,
              every unitStatus received, the catalog of published blobs, provisioning (see
              `db`); one SQLite file
cloud.json    where the running cloud listens (written by `cloud serve`, removed at its end)
pki/          the test PKI that signs blobs (`cloud pki init`)
operator.token  the bearer token of the operator API (0600, made on first start)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..fsutil import atomic_write, fsync_dir
from ..logs import get_logger
from . import db

# Signing with SHA-384 or SHA-512 needs those hashes of the blob, kept from when it was published.
EXTRA_HASHES = ("sha384", "sha512")
TOKEN_FILE = "operator.token"
log = get_logger("cloud.state")
_MAX_PORT = 65535
_UNIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_unit_id(unit_id: str) -> str:
    """A unit id safe to use as a folder name.

    Raises:
        ConfigError: it is not.
    """
    if not _UNIT_ID.match(unit_id):
        raise ConfigError(f"unit id {unit_id!r}: use letters, digits, '.', '_' or '-' (max 128)")
    return unit_id


class CloudState:
    """The state of one reference cloud; its database is opened on first use, so reading
    `cloud.json` (what operator clients do) never makes one.

    Safe to share between threads: each call holds the connection's lock for one short query
    or transaction.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._db is None:
                self._db = db.connect(self.root / db.DB_FILE)
            yield self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # endpoints

    def write_endpoints(self, endpoints: dict[str, Any]) -> None:
        atomic_write(self.root / "cloud.json", orjson.dumps(endpoints, option=orjson.OPT_INDENT_2))

    def endpoints(self) -> dict[str, Any] | None:
        try:
            return orjson.loads((self.root / "cloud.json").read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None

    def clear_endpoints(self) -> None:
        (self.root / "cloud.json").unlink(missing_ok=True)

    # the ports units know

    def kept_ports(self) -> dict[str, int]:
        """The ports (`https`, `wss`) the cloud last served units on: provisioned units know
        the discovery URL by its port, so a restart serves on them again."""
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'ports'").fetchone()
        try:
            ports = orjson.loads(row[0]) if row else {}
        except orjson.JSONDecodeError:
            return {}
        if not isinstance(ports, dict):
            return {}
        return {str(k): v for k, v in ports.items() if isinstance(v, int) and 0 < v <= _MAX_PORT}

    def keep_ports(self, ports: dict[str, int]) -> None:
        """Keep the ports the cloud serves units on now, durably, for its next start."""
        value = orjson.dumps(ports, option=orjson.OPT_SORT_KEYS).decode()
        with self._conn() as conn, db.write(conn):
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('ports', ?)", (value,))

    # the operator API's token

    def ensure_operator_token(self) -> str:
        """The operator API's token, made on first start (0600, fsynced) and kept after."""
        path = self.root / TOKEN_FILE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self.operator_token()
        token = secrets.token_urlsafe(32)
        try:
            os.write(fd, token.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.root)
        log.info("operator.token_created", path=str(path))
        return token

    def operator_token(self) -> str:
        """The operator API's token.

        Raises:
            ConfigError: there is none (no cloud ever started here) or it cannot be read.
        """
        path = self.root / TOKEN_FILE
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist: start `aoscore cloud serve` once") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"{path} is empty")
        return token

    # catalog

    def catalog(self) -> dict[str, dict[str, Any]]:
        with self._conn() as conn:
            rows = conn.execute("SELECT digest, entry FROM blobs").fetchall()
        return {digest: orjson.loads(entry) for digest, entry in rows}

    def add_blobs(self, repository: str, blobs: dict[str, bytes]) -> None:
        """Record published blobs with the hashes a signer may need besides their sha256.

        A blob several images share is held by each of their repositories: `repositories`
        keeps them all, the latest first (`repository`), so the cloud can hand out a URL into
        each and the blob stays served while any of them holds it.
        """
        hashed = {
            digest: {name: hashlib.new(name, data).hexdigest() for name in EXTRA_HASHES}
            for digest, data in blobs.items()
        }
        with self._conn() as conn, db.write(conn):
            for digest, data in blobs.items():
                row = conn.execute("SELECT entry FROM blobs WHERE digest = ?", (digest,)).fetchone()
                known = orjson.loads(row[0]) if row else {}
                held = [r for r in known.get("repositories", [known.get("repository")]) if r]
                entry = {
                    "repository": repository,
                    "repositories": [repository, *(r for r in held if r != repository)],
                    "size": len(data),
                    **hashed[digest],
                }
                conn.execute(
                    "INSERT OR REPLACE INTO blobs (digest, entry) VALUES (?, ?)",
                    (digest, orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)),
                )

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    # units

    def save_desired(self, unit_id: str, body: bytes) -> None:
        """Store a desired status for the unit, durably, before it is sent (its `seq`, if the
        body has one, is kept beside it)."""
        check_unit_id(unit_id)
        with self._conn() as conn, db.write(conn):
            db.insert_desired(conn, unit_id, body, time.time())

    def desired(self, unit_id: str) -> bytes | None:
        """The last desired status stored for the unit."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT body FROM desired WHERE unit = ? ORDER BY id DESC LIMIT 1", (unit_id,)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def record_answer(
        self, unit_id: str, seq: int | None, txn: str, ok: bool, error: str | None = None
    ) -> None:
        """Record the unit's ack (`ok`) or nack of the desired status numbered `seq` that the
        cloud sent under `txn`, durably: what a unit acked it has stored, so a check can hold
        it to that after a cut (`powercut.invariants.acked_in_force`)."""
        with self._conn() as conn, db.write(conn):
            conn.execute(
                "INSERT INTO answers (unit, seq, txn, answered_at, ok, error)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (check_unit_id(unit_id), seq, txn, time.time(), int(ok), error),
            )

    def answers(self, unit_id: str) -> list[dict[str, Any]]:
        """The unit's answers to desired statuses, in arrival order, each as
        `{"seq", "txn", "answeredAt", "ok", "error"}`."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT seq, txn, answered_at, ok, error FROM answers WHERE unit = ? ORDER BY id",
                (unit_id,),
            ).fetchall()
        return [
            {"seq": seq, "txn": txn, "answeredAt": at, "ok": bool(ok), "error": error}
            for seq, txn, at, ok, error in rows
        ]

    def desired_seqs(self, unit_id: str) -> list[tuple[int | None, bytes]]:
        """Every desired status stored for the unit, oldest first, as (seq, body)."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT seq, body FROM desired WHERE unit = ? ORDER BY id", (unit_id,)
            ).fetchall()
        return [(seq, bytes(body)) for seq, body in rows]

    def append_status(self, unit_id: str, txn: str, data: dict[str, Any]) -> bool:
        """Record one received unitStatus, committed before the cloud acks it.

        Returns:
            False when the unit's status with this txn is recorded already (a resend whose
            ack was lost): it is recorded once.
        """
        row = db.status_row(check_unit_id(unit_id), txn, data, time.time())
        with self._conn() as conn, db.write(conn):
            return db.insert_status(conn, row)

    def timeline(self, unit_id: str) -> list[dict[str, Any]]:
        """Every unitStatus the unit sent, in arrival order, each as
        `{"receivedAt", "txn", "unitStatus"}`."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT received_at, txn, data FROM statuses WHERE unit = ? ORDER BY id",
                (unit_id,),
            ).fetchall()
        return [_record(row) for row in rows]

    def view_records(self, unit_id: str) -> list[dict[str, Any]]:
        """The records `ordering.unit_view` needs, in arrival order: from the unit's last full
        status in its order on, so a unit's view costs its last few statuses, not its whole
        history. The whole timeline when no full status carries a seq, or when the first
        arrival at that seq was a delta (the full one is then a duplicate the view skips)."""
        select = "SELECT received_at, txn, data, seq, full FROM statuses WHERE unit = ?"
        with self._conn() as conn:
            (base,) = conn.execute(
                "SELECT max(seq) FROM statuses WHERE unit = ? AND full = 1", (unit_id,)
            ).fetchone()
            rows = []
            if base is not None:
                rows = conn.execute(
                    f"{select} AND seq >= ? ORDER BY id", (unit_id, base)
                ).fetchall()
                first = next(row for row in rows if row[3] == base)
                if not first[4]:
                    rows = []
            if not rows:
                rows = conn.execute(f"{select} ORDER BY id", (unit_id,)).fetchall()
        return [_record(row[:3]) for row in rows]

    def units(self) -> list[str]:
        """Every unit the cloud heard from or holds a desired status for, sorted."""
        with self._conn() as conn:
            return [r[0] for r in conn.execute("SELECT unit FROM fleet ORDER BY unit")]

    def fleet(self) -> list[UnitRecord]:
        """Every unit with what the cloud last heard from it, sorted by id."""
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT f.unit, f.first_seen, f.last_seen, f.last_boot, f.last_seq, f.statuses,"
                " (SELECT seq FROM desired d WHERE d.unit = f.unit ORDER BY id DESC LIMIT 1)"
                " FROM fleet f ORDER BY f.unit"
            ).fetchall()
        return [UnitRecord(*row) for row in rows]


@dataclass(frozen=True)
class UnitRecord:
    """What the cloud keeps of one unit besides its timeline."""

    unit: str
    first_seen: float
    last_seen: float | None
    last_boot: str | None
    last_seq: int | None
    statuses: int
    desired_seq: int | None


def _record(row: tuple[float, str, bytes]) -> dict[str, Any]:
    return {"receivedAt": row[0], "txn": row[1], "unitStatus": orjson.loads(row[2])}
