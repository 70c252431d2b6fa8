"""The agent's durable state: one SQLite file, WAL, synchronous=FULL, forward migrations."""

from .database import SCHEMA_VERSION, open_database, open_readonly
from .lock import DataDirInUse, DataDirLock, DataDirUnusable
from .names import DB_NAME
from .store import Storage

__all__ = [
    "DB_NAME",
    "SCHEMA_VERSION",
    "DataDirInUse",
    "DataDirLock",
    "DataDirUnusable",
    "Storage",
    "open_database",
    "open_readonly",
]
