"""What a publish asks for, checked before anything is built: the same rules for
`aoscore cloud publish` and the operator API's `POST /images`, so both refuse the same input
with the same words."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..nodes.itemconfig import ItemConfig, Quotas, RequestedResources

IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
RUNTIME_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_QUANTITY = (1 << 63) - 1  # AosCore reads quotas as uint64; JSON readers stop at int64
MAX_EXTRA_BYTES = 1 << 32


def item_config_of(
    *,
    cpu_limit: int | None = None,
    ram_limit: int | None = None,
    pids_limit: int | None = None,
    requested_cpu: int | None = None,
    requested_ram: int | None = None,
    runtimes: Sequence[str] = (),
) -> ItemConfig | None:
    """The item config a publish writes for its options; None when none is given, so a
    plain image stays a plain OCI image (no `aosItemConfig`)."""
    quotas = Quotas(cpu_dmips_limit=cpu_limit, ram_limit=ram_limit, pids_limit=pids_limit)
    asked = None
    if requested_cpu is not None or requested_ram is not None:
        asked = RequestedResources(cpu=requested_cpu, ram=requested_ram)
    if quotas == Quotas() and asked is None and not runtimes:
        return None
    return ItemConfig(runtimes=tuple(runtimes), quotas=quotas, requested_resources=asked)


# JSON field -> (item_config_of keyword, smallest value)
_QUANTITIES = {
    "cpuLimit": ("cpu_limit", 1),
    "ramLimit": ("ram_limit", 1),
    "pidsLimit": ("pids_limit", 1),
    "requestedCpu": ("requested_cpu", 0),
    "requestedRam": ("requested_ram", 0),
}
_FIELDS = {"name", "image", "healthcheck", "startPeriod", "size", "runtimes", *_QUANTITIES}


@dataclass(frozen=True)
class PublishRequest:
    """One image to publish: a test image built here, or an existing one (`image`)."""

    name: str
    image: str | None = None
    healthcheck: str | None = None
    start_period_s: float | None = None
    size: int = 0
    item_config: ItemConfig | None = None

    @classmethod
    def from_json(cls, body: Any) -> PublishRequest:
        """Read `POST /images`' body: `{"name", "image"?, "healthcheck"?, "startPeriod"?,
        "size"?, "cpuLimit"?, "ramLimit"?, "pidsLimit"?, "requestedCpu"?, "requestedRam"?,
        "runtimes"?}`; sizes in bytes, CPU in DMIPS.

        Raises:
            ConfigError: naming the field that is wrong, or an unknown one.
        """
        if not isinstance(body, Mapping):
            raise ConfigError("the body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise ConfigError(f"unknown field {unknown[0]!r}: use {', '.join(sorted(_FIELDS))}")
        name = body.get("name")
        if not isinstance(name, str) or not IMAGE_NAME.match(name):
            raise ConfigError(f"name {name!r}: use lowercase letters, digits and . _ -")
        image = _optional_str(body, "image")
        healthcheck = _optional_str(body, "healthcheck")
        start = body.get("startPeriod")
        if start is not None and (_not_number(start) or start < 0):
            raise ConfigError(f"startPeriod {start!r}: expected seconds >= 0")
        size = _quantity(body, "size", 0, MAX_EXTRA_BYTES) or 0
        runtimes = body.get("runtimes") or []
        if not isinstance(runtimes, list) or not all(
            isinstance(r, str) and RUNTIME_TYPE.match(r) for r in runtimes
        ):
            raise ConfigError(
                f"runtimes {runtimes!r}: a list of runtime types (crun, runc, docker)"
            )
        options = {
            keyword: _quantity(body, field, minimum, MAX_QUANTITY)
            for field, (keyword, minimum) in _QUANTITIES.items()
        }
        item_config = item_config_of(runtimes=tuple(dict.fromkeys(runtimes)), **options)
        if image is not None:
            given = [
                f
                for f in ("healthcheck", "startPeriod", "size", "runtimes", *_QUANTITIES)
                if body.get(f) not in (None, 0, [])
            ]
            if given:
                raise ConfigError(f"{', '.join(given)}: not with image (the image keeps its own)")
        return cls(name, image, healthcheck, start, size, item_config)


def _not_number(value: object) -> bool:
    return isinstance(value, bool) or not isinstance(value, (int, float))


def _optional_str(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{field} {value!r}: expected a non-empty string")
    return value


def _quantity(body: Mapping[str, Any], field: str, minimum: int, maximum: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise ConfigError(f"{field} {value!r}: expected a whole number from {minimum} to {maximum}")
    return value
