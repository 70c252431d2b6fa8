"""The agent's durable state: one SQLite file, WAL, synchronous=FULL, forward migrations."""

from .database import DB_NAME, SCHEMA_VERSION, open_database, open_readonly
from .store import Storage

__all__ = ["DB_NAME", "SCHEMA_VERSION", "Storage", "open_database", "open_readonly"]
