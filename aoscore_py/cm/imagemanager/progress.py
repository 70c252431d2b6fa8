"""What is downloading now, for operators: a log line every few seconds, and a small file that
`aoscore images status` reads (bytes present, size, rate, where a transfer resumed from).

The file is a report, not state: written whole under a temporary name and renamed, never
fsynced, and a full disk only skips it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from ...blobs.download import Transfer
from ...logs import MIB, get_logger

log = get_logger("imagemanager")

PROGRESS_FILE = "progress.json"


class ProgressReporter:
    """Reports the transfers in `active` every `interval_s` seconds while `run` runs.

    Args:
        active: the downloader's transfers under way, by digest.
        path: the progress file.
        interval_s: seconds between reports.
    """

    def __init__(self, active: Mapping[str, Transfer], path: Path, interval_s: float) -> None:
        self._active = active
        self.path = path
        self._interval_s = interval_s

    async def run(self) -> None:
        """Log and write progress until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            transfers = list(self._active.values())
            if not transfers:
                continue
            present = sum(t.present for t in transfers)
            total = sum(t.size for t in transfers)
            rate = sum(t.rate for t in transfers)
            log.info(
                "download.progress",
                blobs=len(transfers),
                present=present,
                total=total,
                percent=round(100 * present / total, 1) if total else None,
                mib_s=round(rate / MIB, 1),
                eta_s=round((total - present) / rate, 1) if rate else None,
            )
            self.write()

    def write(self) -> None:
        """Write what is downloading now (nothing, once the downloads are over)."""
        body = {
            "updatedAt": time.time(),
            "transfers": [
                {
                    "digest": t.digest,
                    "size": t.size,
                    "present": t.present,
                    "resumedFrom": t.resumed_from,
                    "bytesPerSecond": round(t.rate),
                }
                for t in self._active.values()
            ],
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_bytes(orjson.dumps(body))
            tmp.replace(self.path)
        except OSError as exc:  # a full disk must not fail a download over a progress report
            log.debug("progress.not_written", path=str(self.path), error=str(exc))


def read_progress(data_dir: Path) -> dict[str, Any]:
    """What the reporter last wrote in `data_dir`, or no transfers."""
    try:
        return dict(orjson.loads((data_dir / PROGRESS_FILE).read_bytes()))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {"transfers": []}
