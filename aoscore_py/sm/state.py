"""The service manager's durable memory: the instances the CM last asked for, each item's
backoff, and each instance's health record, in one small JSON file.

With it, a restarted service manager goes on converging (finishing a blue-green replacement,
restarting a crashed instance after its backoff) before the CM speaks again, and its crash
counters survive. The file is rewritten whole with `fsutil.atomic_write` (temp, fsync, rename,
fsync the folder), so a power cut leaves the old or the new one. A file that cannot be read is
logged and replaced: the CM sends the instances again, and only the counters are lost.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

from statemachine import crashpoint

from ..fsutil import atomic_write
from ..logs import get_logger
from ..nodes import ImageLayout, InstanceKey, InstanceSpec
from .crashpoints import STATE_STORED
from .health import Backoff, HealthRecord

FILE_NAME = "sm-state.json"
_VERSION = 1

_log = get_logger("sm.state")


def _spec_json(spec: InstanceSpec) -> dict[str, Any]:
    image = spec.image
    return {
        "key": [spec.key.item_id, spec.key.subject_id, spec.key.instance],
        "itemType": spec.item_type,
        "version": spec.version,
        "priority": spec.priority,
        "image": {
            "index": image.index_digest,
            "manifestDigest": image.manifest_digest,
            "manifest": image.manifest,
            "config": image.config_digest,
            "layers": list(image.layer_digests),
        },
    }


def _spec(data: Mapping[str, Any]) -> InstanceSpec:
    item, subject, index = data["key"]
    image = data["image"]
    layout = ImageLayout(
        str(image["index"]),
        str(image["manifestDigest"]),
        dict(image["manifest"]),
        str(image["config"]),
        tuple(str(d) for d in image["layers"]),
    )
    key = InstanceKey(str(item), str(subject), int(index))
    return InstanceSpec(
        key, str(data["itemType"]), str(data["version"]), layout, int(data["priority"])
    )


class SmState:
    """What the service manager remembers across restarts.

    Args:
        path: the JSON file; None keeps everything in memory (nothing survives a restart).
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        # None: no instance list received yet (the service manager then only keeps what runs).
        self.wanted: dict[InstanceKey, InstanceSpec] | None = None
        self.backoffs: dict[str, Backoff] = {}
        self.health: dict[InstanceKey, HealthRecord] = {}
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = orjson.loads(path.read_bytes())
            wanted = data.get("wanted")
            self.wanted = None if wanted is None else {s.key: s for s in map(_spec, wanted)}
            self.backoffs = {k: Backoff(**v) for k, v in data.get("backoffs", {}).items()}
            self.health = {
                InstanceKey(*entry["key"]): HealthRecord.from_json(entry["record"])
                for entry in data.get("health", [])
            }
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            self.wanted, self.backoffs, self.health = None, {}, {}
            _log.error(
                "state.unreadable",
                path=str(path),
                error=f"{type(exc).__name__}: {exc}",
                next="starting without it; the CM sends the instances again",
            )

    def set_wanted(
        self, specs: Sequence[InstanceSpec], backoffs: Mapping[str, Backoff] | None = None
    ) -> bool:
        """Remember what the CM wants; True when that changed (then `save`).

        Health records of instances no longer wanted are dropped.
        """
        wanted = {s.key: s for s in specs}
        backoffs = dict(backoffs or {})
        if wanted == self.wanted and backoffs == self.backoffs:
            return False
        self.wanted, self.backoffs = wanted, backoffs
        self.health = {k: r for k, r in self.health.items() if k in wanted}
        return True

    def backoff(self, item_id: str, default: Backoff) -> Backoff:
        return self.backoffs.get(item_id, default)

    def to_json(self) -> bytes:
        wanted = (
            None if self.wanted is None else [_spec_json(s) for _, s in sorted(self.wanted.items())]
        )
        return orjson.dumps(
            {
                "version": _VERSION,
                "wanted": wanted,
                "backoffs": {k: vars(v) for k, v in sorted(self.backoffs.items())},
                "health": [
                    {"key": [k.item_id, k.subject_id, k.instance], "record": r.to_json()}
                    for k, r in sorted(self.health.items())
                ],
            }
        )

    def save(self) -> None:
        """Write the file durably (a no-op in memory). Blocking: call it off the event loop.

        Raises:
            OSError: the file cannot be written (a full disk, a read-only folder).
        """
        if self.path is None:
            return
        atomic_write(self.path, self.to_json())
        crashpoint(STATE_STORED)
