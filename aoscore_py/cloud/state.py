"""The reference cloud's durable state, all under one folder:

cloud.json                  where the running cloud listens (written by `cloud serve`)
catalog.json                published blobs: digest -> repositories, size, sha384, sha512
pki/                        the test PKI that signs blobs (`cloud pki init`)
units/<id>/desired.json     the last desired status pushed to the unit
units/<id>/timeline.jsonl   every unitStatus received, one JSON object per line
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from ..fsutil import atomic_write

# Signing with SHA-384 or SHA-512 needs those hashes of the blob, kept from when it was published.
EXTRA_HASHES = ("sha384", "sha512")
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
    """The files of one reference cloud."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

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

    # catalog

    def catalog(self) -> dict[str, dict[str, Any]]:
        try:
            return orjson.loads((self.root / "catalog.json").read_bytes())
        except FileNotFoundError:
            return {}

    def add_blobs(self, repository: str, blobs: dict[str, bytes]) -> None:
        """Record published blobs with the hashes a signer may need besides their sha256.

        A blob several images share is held by each of their repositories: `repositories`
        keeps them all, the latest first (`repository`), so the cloud can hand out a URL into
        each and the blob stays served while any of them holds it.
        """
        catalog = self.catalog()
        for digest, data in blobs.items():
            known = catalog.get(digest, {})
            held = [r for r in known.get("repositories", [known.get("repository")]) if r]
            catalog[digest] = {
                "repository": repository,
                "repositories": [repository, *(r for r in held if r != repository)],
                "size": len(data),
                **{name: hashlib.new(name, data).hexdigest() for name in EXTRA_HASHES},
            }
        atomic_write(self.root / "catalog.json", orjson.dumps(catalog, option=orjson.OPT_SORT_KEYS))

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    # units

    def unit_dir(self, unit_id: str) -> Path:
        path = self.root / "units" / check_unit_id(unit_id)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def save_desired(self, unit_id: str, body: bytes) -> None:
        atomic_write(self.unit_dir(unit_id) / "desired.json", body)

    def desired(self, unit_id: str) -> bytes | None:
        try:
            return (self.unit_dir(unit_id) / "desired.json").read_bytes()
        except FileNotFoundError:
            return None

    def timeline_path(self, unit_id: str) -> Path:
        return self.unit_dir(unit_id) / "timeline.jsonl"

    def append_status(self, unit_id: str, txn: str, data: dict[str, Any]) -> None:
        """Append one received unitStatus to the unit's timeline, durably (before it is acked).

        A last line torn by a cut is ended first, so the new record stays readable.
        """
        line = orjson.dumps({"receivedAt": time.time(), "txn": txn, "unitStatus": data}) + b"\n"
        with open(self.timeline_path(unit_id), "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def units(self) -> list[str]:
        folder = self.root / "units"
        return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def read_timeline(path: Path) -> list[dict[str, Any]]:
    """Every complete record of a timeline file (a torn last line is skipped)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        try:
            out.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return out
