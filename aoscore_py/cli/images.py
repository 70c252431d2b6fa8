"""`aoscore images ...`: the unit's items and blobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from .common import data_dir_option, exit_codes, fail


@click.group()
def images() -> None:
    """The unit's items and blobs: status of downloads, verification on demand."""


def _open_store(data_dir: Path, *, read_only: bool) -> Any:
    from ..storage import DB_NAME, Storage

    if not (data_dir / DB_NAME).exists():
        fail(f"{data_dir}: no agent store here (is --data-dir right?)", 2)
    with exit_codes():
        return Storage(data_dir, read_only=read_only)


@images.command("status")
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def images_status(data_dir: Path, as_json: bool) -> None:
    """Items with their states, and the downloads under way (bytes, rate)."""
    from ..cm.imagemanager.progress import read_progress

    storage = _open_store(data_dir, read_only=True)
    try:
        with exit_codes():
            items = storage.items()
            blobs = storage.blobs()
    finally:
        storage.close()
    progress = read_progress(data_dir)
    if as_json:
        body = {
            "items": [
                {
                    "id": r.item_id,
                    "version": r.version,
                    "state": r.state.value,
                    "error": r.error.message if r.error else None,
                }
                for r in items
            ],
            "blobs": {"count": len(blobs), "bytes": sum(b.size for b in blobs)},
            "transfers": progress["transfers"],
        }
        click.echo(orjson.dumps(body).decode())
        return
    click.echo(f"{'item':<24} {'version':<12} {'state':<12} error")
    for r in items:
        error = r.error.message if r.error else ""
        click.echo(f"{r.item_id:<24} {r.version:<12} {r.state.value:<12} {error}")
    click.echo(f"\nblobs: {len(blobs)} verified, {sum(b.size for b in blobs) / (1 << 20):.1f} MiB")
    transfers = progress["transfers"]
    if transfers:
        click.echo(f"\n{'downloading':<20} {'present':>12} {'size':>12} {'%':>6} {'MiB/s':>7}")
        for t in transfers:
            pct = 100 * t["present"] / t["size"] if t["size"] else 0.0
            rate = t["bytesPerSecond"] / (1 << 20)
            digest, present, size = t["digest"][:19], t["present"], t["size"]
            click.echo(f"{digest:<20} {present:>12} {size:>12} {pct:>6.1f} {rate:>7.1f}")


@images.command("verify")
@data_dir_option
def images_verify(data_dir: Path) -> None:
    """Hash every stored blob again; remove the corrupt ones so they are fetched again.

    It changes the store, so it takes the data directory's lock as the agent does: stop the
    agent first (a running agent is named by its pid). Exits 1 when any blob was corrupt or
    missing, or when the data directory is in use.
    """
    from ..blobs.store import BlobStore
    from ..cm.imagemanager.audit import audit
    from ..storage import DataDirLock

    with exit_codes():
        lock = DataDirLock.acquire(data_dir)
    try:
        storage = _open_store(data_dir, read_only=False)
        try:
            with exit_codes():
                rows = audit(storage, BlobStore(data_dir))
        finally:
            storage.close()
    finally:
        lock.release()
    for row in rows:
        size = "-" if row.size is None else str(row.size)
        click.echo(f"{row.digest}  {size:>12}  {row.verdict:<10}  {row.action}")
    bad = [r for r in rows if r.verdict in ("corrupt", "missing")]
    click.echo(f"{len(rows)} blobs checked, {len(bad)} corrupt or missing")
    sys.exit(1 if bad else 0)
