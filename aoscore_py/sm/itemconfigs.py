"""The item configs of the node's instances, read from their verified blobs once per digest.

An instance's manifest may name an item config (`aosItemConfig`); the blob cache fetched and
checked it with the image. The manager asks here for what it means on this node: the limits of
the instance's container (quotas.py) and the item's restart backoff (its `runParameters`).
Blobs are content-addressed, so a digest read once never needs reading again. Every call reads
files: the manager makes them on its worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..errors import AosError, RuntimeEngineError
from ..logs import get_logger
from ..nodes import InstanceSpec
from ..nodes.itemconfig import ItemConfig
from .health import Backoff
from .quotas import container_limits, read_item_config
from .types import ContainerLimits, item_config_digest

log = get_logger("sm.itemconfigs")


class ItemConfigs:
    """Item configs by digest, and what they ask of this node.

    Args:
        blob_path: where a verified blob lies.
        max_dmips: the node's CPU in DMIPS (None: `quotas.DEFAULT_DMIPS_PER_CORE` per CPU).
        cpus: the engine's CPU count.
        backoff: the restart backoff the `runParameters` of an item override.
    """

    def __init__(
        self,
        blob_path: Callable[[str], Path],
        *,
        max_dmips: int | None,
        cpus: int,
        backoff: Backoff,
    ) -> None:
        self._blob_path = blob_path
        self._max_dmips = max_dmips
        self._cpus = cpus
        self._backoff = backoff
        self._read: dict[str, ItemConfig] = {}

    def of(self, spec: InstanceSpec) -> ItemConfig | None:
        """The item config `spec`'s manifest names; None when it names none.

        Raises:
            ProtocolError: it does not read (invalidArgument; names the blob and the JSON path).
            RuntimeEngineError: its blob is not on disk.
        """
        digest = item_config_digest(spec.image.manifest)
        if not digest:
            return None
        found = self._read.get(digest)
        if found is None:
            try:
                raw = self._blob_path(digest).read_bytes()
            except OSError as exc:
                raise RuntimeEngineError(f"read item config {digest}: {exc}") from exc
            found = self._read[digest] = read_item_config(raw, digest)
        return found

    def limits(self, spec: InstanceSpec) -> ContainerLimits:
        """The limits `spec`'s container is created with (none without an item config).

        Raises:
            AosError: as `of`.
        """
        return container_limits(self.of(spec), self._max_dmips, self._cpus)

    def backoffs(self, specs: Sequence[InstanceSpec]) -> dict[str, Backoff]:
        """Item id -> the restart backoff its item config's `runParameters` ask for (the first
        spec of an item decides; an item whose config names none is left out). A config that
        does not read keeps the default: its instance fails when its container is created.
        Forgets the configs no spec names any more."""
        out: dict[str, Backoff] = {}
        for spec in specs:
            if spec.key.item_id in out:
                continue
            try:
                config = self.of(spec)
            except AosError as exc:
                log.warning(
                    "item_config.unreadable",
                    instance=str(spec.key),
                    error=exc.message,
                    next="default restart backoff; the instance fails to start",
                )
                continue
            backoff = (
                None if config is None else Backoff.from_item(config.run_parameters, self._backoff)
            )
            if backoff is not None:
                out[spec.key.item_id] = backoff
        wanted = {item_config_digest(s.image.manifest) for s in specs}
        self._read = {d: c for d, c in self._read.items() if d in wanted}
        return out
