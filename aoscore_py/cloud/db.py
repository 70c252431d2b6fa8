"""The reference cloud's one SQLite file, `<cloud-dir>/cloud.db`: its schema, and the one-time
import of a cloud dir the previous version kept in JSON files.

WAL with synchronous=FULL: a commit is on disk when it returns, so a unit status the cloud
acked, a desired status it accepted and a token it consumed survive a power cut. Several
processes share the file (`cloud serve`, `cloud token new`, test rigs), each with its own
connection; writers take the lock at BEGIN (IMMEDIATE) and wait up to `BUSY_TIMEOUT_S`.

Tables (each per-unit read is one index range, whatever the number of units):
- `tokens`, `units`: provisioning (one-use token hashes; provisioned units and certificates).
- `fleet`: every unit the cloud heard from or holds a desired status for, with its last status.
- `desired`: every desired status accepted, with the seq the cloud stamped on it.
- `statuses`: every unitStatus received, one row each, its txn unique per unit.
- `answers`: the unit's ack or nack of each desired status the cloud sent it, with that
  status's seq (schema 2), so a check can tell what the unit accepted from what was only sent.
- `blobs`: the catalog of published blobs, one JSON entry per digest.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..logs import get_logger

log = get_logger("cloud.db")

DB_FILE = "cloud.db"
BUSY_TIMEOUT_S = 10.0
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    created REAL NOT NULL,
    used REAL,
    system_id TEXT
);
CREATE TABLE IF NOT EXISTS units (
    system_id TEXT PRIMARY KEY,
    provisioned REAL NOT NULL,
    serial TEXT NOT NULL,
    not_after REAL NOT NULL,
    certificate TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet (
    unit TEXT PRIMARY KEY,
    first_seen REAL NOT NULL,
    last_seen REAL,
    last_txn TEXT,
    last_boot TEXT,
    last_seq INTEGER,
    statuses INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS desired (
    id INTEGER PRIMARY KEY,
    unit TEXT NOT NULL,
    seq INTEGER,
    stored_at REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS desired_unit ON desired (unit, id);
CREATE TABLE IF NOT EXISTS statuses (
    id INTEGER PRIMARY KEY,
    unit TEXT NOT NULL,
    received_at REAL NOT NULL,
    txn TEXT NOT NULL,
    boot_id TEXT,
    seq INTEGER,
    full INTEGER NOT NULL,
    data BLOB NOT NULL,
    UNIQUE (unit, txn)
);
CREATE INDEX IF NOT EXISTS statuses_unit ON statuses (unit, id);
CREATE INDEX IF NOT EXISTS statuses_full ON statuses (unit, full, seq);
CREATE TABLE IF NOT EXISTS blobs (digest TEXT PRIMARY KEY, entry BLOB NOT NULL);
"""

# Added by each schema version after the first, applied in order to an older file.
_MIGRATIONS: dict[int, str] = {
    2: """
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY,
    unit TEXT NOT NULL,
    seq INTEGER,
    txn TEXT NOT NULL,
    answered_at REAL NOT NULL,
    ok INTEGER NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS answers_unit ON answers (unit, id);
""",
}


def connect(path: Path) -> sqlite3.Connection:
    """Open `path` (made on first use) with the cloud's schema; a cloud dir of the previous
    version (JSON files, provisioning.db) beside it is imported once, in the same transaction
    that makes the schema, so a cut leaves either nothing or everything imported.

    Raises:
        ConfigError: a previous version's catalog.json is not JSON (nothing is imported).
        sqlite3.Error: the file cannot be opened or written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are opened explicitly, with BEGIN IMMEDIATE.
    db = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version < SCHEMA_VERSION:
        with write(db):
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version < 1:
                _execute(db, _SCHEMA)
                _import_legacy(db, path.parent)
            for number in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                _execute(db, _MIGRATIONS[number])
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return db


def _execute(db: sqlite3.Connection, script: str) -> None:
    """Run each statement of `script` inside the caller's transaction (`executescript` would
    commit it)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


@contextlib.contextmanager
def write(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One durable write transaction: committed when the block ends, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def status_row(unit: str, txn: str, data: dict[str, Any], received_at: float) -> tuple:
    """The `statuses` row of one unitStatus: the unit's causality fields pulled out to index."""
    boot, seq = data.get("bootId"), data.get("seq")
    return (
        unit,
        received_at,
        txn,
        boot if isinstance(boot, str) else None,
        seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
        0 if data.get("isDeltaInfo") else 1,
        orjson.dumps(data),
    )


def insert_status(db: sqlite3.Connection, row: tuple) -> bool:
    """Record one status (inside a write transaction); False when its txn was recorded."""
    added = db.execute(
        "INSERT OR IGNORE INTO statuses (unit, received_at, txn, boot_id, seq, full, data) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        row,
    ).rowcount
    if not added:
        return False
    unit, received_at, txn, boot, seq = row[:5]
    db.execute(
        "INSERT INTO fleet (unit, first_seen, last_seen, last_txn, last_boot, last_seq, statuses)"
        " VALUES (?1, ?2, ?2, ?3, ?4, ?5, 1) ON CONFLICT (unit) DO UPDATE SET last_seen = ?2,"
        " last_txn = ?3, last_boot = ?4, last_seq = ?5, statuses = statuses + 1",
        (unit, received_at, txn, boot, seq),
    )
    return True


def insert_desired(db: sqlite3.Connection, unit: str, body: bytes, stored_at: float) -> None:
    """Record one desired status (inside a write transaction), with the seq it carries."""
    try:
        seq = orjson.loads(body).get("seq")
    except (orjson.JSONDecodeError, AttributeError):
        seq = None
    db.execute(
        "INSERT INTO desired (unit, seq, stored_at, body) VALUES (?, ?, ?, ?)",
        (unit, seq if isinstance(seq, int) else None, stored_at, body),
    )
    db.execute(
        "INSERT INTO fleet (unit, first_seen) VALUES (?, ?) ON CONFLICT (unit) DO NOTHING",
        (unit, stored_at),
    )


def _import_legacy(db: sqlite3.Connection, root: Path) -> None:
    """Import what the previous version kept in files (their content is left as it was)."""
    counts = {"units": 0, "statuses": 0, "blobs": 0, "tokens": 0}
    catalog = root / "catalog.json"
    if catalog.exists():
        try:
            entries = orjson.loads(catalog.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{catalog}: not JSON ({exc}); repair or remove it") from None
        db.executemany(
            "INSERT OR REPLACE INTO blobs (digest, entry) VALUES (?, ?)",
            [(d, orjson.dumps(e)) for d, e in entries.items()],
        )
        counts["blobs"] = len(entries)
    folder = root / "units"
    for unit_dir in sorted(folder.iterdir()) if folder.is_dir() else []:
        counts["units"] += 1
        desired = unit_dir / "desired.json"
        if desired.exists():
            insert_desired(db, unit_dir.name, desired.read_bytes(), desired.stat().st_mtime)
        timeline = unit_dir / "timeline.jsonl"
        for line in timeline.read_bytes().splitlines() if timeline.exists() else []:
            try:
                record = orjson.loads(line)
                row = status_row(
                    unit_dir.name, record["txn"], record["unitStatus"], record["receivedAt"]
                )
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a cut
            counts["statuses"] += insert_status(db, row)
    provisioning = root / "provisioning.db"
    if provisioning.exists():
        # Read with a connection of its own: SQLite attaches no file inside a transaction.
        old = sqlite3.connect(provisioning, timeout=BUSY_TIMEOUT_S)
        try:
            tokens = old.execute("SELECT hash, created, used, system_id FROM tokens").fetchall()
            units = old.execute(
                "SELECT system_id, provisioned, serial, not_after, certificate FROM units"
            ).fetchall()
        except sqlite3.OperationalError:
            tokens, units = [], []
        finally:
            old.close()
        db.executemany("INSERT OR IGNORE INTO tokens VALUES (?, ?, ?, ?)", tokens)
        db.executemany("INSERT OR IGNORE INTO units VALUES (?, ?, ?, ?, ?)", units)
        counts["tokens"] = len(tokens)
    if any(counts.values()):
        db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('imported', ?)",
            (orjson.dumps({"at": time.time(), **counts}).decode(),),
        )
        log.info("cloud.imported", dir=str(root), **counts)
