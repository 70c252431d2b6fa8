"""The names of the store's files in the data directory."""

DB_NAME = "aoscore.db"
SIDECAR_NAME = f"{DB_NAME}.id"
LOCK_NAME = "aoscore.lock"
