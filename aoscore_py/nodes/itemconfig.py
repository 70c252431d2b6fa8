"""AosCore's item config (`aosItemConfig`): the JSON an item's manifest may name, typed.

Field names, units, defaults follow AosCore's own reader (aos_core_cpp,
`src/common/ocispec/itemconfig.cpp`): keys match ignoring case (`cpuDMIPSLimit` is
`cpuDmipsLimit`), CPU is in DMIPS, RAM in bytes, durations are ISO 8601. Unknown keys are
skipped, as AosCore skips them. Two leniencies: `author` may be missing (AosCore requires it,
yet nothing here reads it), a runtime or resource may be a bare string as well as an object.
Every refusal is a `ProtocolError` naming the JSON path, e.g. `$.quotas.ramLimit: expected an
integer >= 0, got -1`, since the config comes from the cloud like any message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aoscore_py.errors import ProtocolError
from aoscore_py.protocol._json import JsonObject, as_str, decode, shorten
from aoscore_py.protocol._values import format_duration, parse_duration

MAX_ITEM_CONFIG_BYTES = 1024 * 1024
"""Largest item config accepted: AosCore's own configs are a few kilobytes."""

DEFAULT_RESOURCE_RATIO = 50
"""Percent of a quota requested when the item names no request (AosCore's default ratio)."""

DEFAULT_RUNTIMES = ("crun", "docker", "runc")
"""Runtime types an item config naming none may use: AosCore's crun, runc, plus our docker."""


class BalancingPolicy(enum.StrEnum):
    """Whether the launcher may move the item's instances when it rebalances."""

    ENABLED = "enabled"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class Quotas:
    """Hard limits of one instance; None means no limit. CPU in DMIPS, sizes in bytes."""

    cpu_dmips_limit: int | None = None
    ram_limit: int | None = None
    pids_limit: int | None = None
    no_file_limit: int | None = None
    tmp_limit: int | None = None
    state_limit: int | None = None
    storage_limit: int | None = None
    upload_speed: int | None = None
    download_speed: int | None = None
    upload_limit: int | None = None
    download_limit: int | None = None


@dataclass(frozen=True, slots=True)
class RequestedResources:
    """What one instance books on its node: CPU in DMIPS, the others in bytes."""

    cpu: int | None = None
    ram: int | None = None
    storage: int | None = None
    state: int | None = None


@dataclass(frozen=True, slots=True)
class ResourceRequest:
    """A shared node resource the item needs (a camera, a GPU), with its access mode."""

    name: str
    mode: str = ""


@dataclass(frozen=True, slots=True)
class RunParameters:
    """How the service manager restarts the instance; durations in seconds."""

    start_interval: float | None = None
    start_burst: int | None = None
    restart_interval: float | None = None


@dataclass(frozen=True, slots=True)
class ItemConfig:
    """The parts of AosCore's item config this agent reads."""

    runtimes: tuple[str, ...] = ()
    quotas: Quotas = field(default_factory=Quotas)
    requested_resources: RequestedResources | None = None
    resources: tuple[ResourceRequest, ...] = ()
    run_parameters: RunParameters = field(default_factory=RunParameters)
    balancing_policy: BalancingPolicy = BalancingPolicy.ENABLED
    skip_resource_limits: bool = False
    author: str = ""
    hostname: str | None = None

    @property
    def runtime_types(self) -> tuple[str, ...]:
        """The runtime types the item may run on: those it names, else `DEFAULT_RUNTIMES`."""
        return self.runtimes or DEFAULT_RUNTIMES


@dataclass(frozen=True)
class ItemFacts:
    """What a stored item version says about where it may run: what the launcher places by.

    `config` is None when the image names no item config: a plain OCI image, which AosCore's
    launcher refuses (notFound) and ours may place with no quotas on the default runtimes.
    `os`, `architecture` and `variant` come from the image config, None when absent or empty.
    """

    config: ItemConfig | None
    os: str | None
    architecture: str | None
    variant: str | None


# --- requested resources --------------------------------------------------------------------------


def requested(asked: int | None, quota: int | None, ratio: int | None) -> int:
    """One requested resource, as AosCore computes it.

    The item's own request clamped to its quota; else the quota times the node's ratio
    (`DEFAULT_RESOURCE_RATIO` when the node has none, capped at 100 %), rounded half up;
    else 0. Integer arithmetic, so that a large RAM quota rounds exactly.
    """
    if asked is not None:
        return asked if quota is None else min(asked, quota)
    if quota is None:
        return 0
    percent = DEFAULT_RESOURCE_RATIO if ratio is None else max(0, min(ratio, 100))
    return (quota * percent + 50) // 100


def requested_cpu(config: ItemConfig | None, ratio: int | None) -> int:
    """DMIPS one instance books on a node whose CPU ratio is `ratio` (percent)."""
    if config is None or config.skip_resource_limits:
        return 0
    asked = config.requested_resources.cpu if config.requested_resources else None
    return requested(asked, config.quotas.cpu_dmips_limit, ratio)


def requested_ram(config: ItemConfig | None, ratio: int | None) -> int:
    """Bytes of RAM one instance books on a node whose RAM ratio is `ratio` (percent)."""
    if config is None or config.skip_resource_limits:
        return 0
    asked = config.requested_resources.ram if config.requested_resources else None
    return requested(asked, config.quotas.ram_limit, ratio)


def shared_resources(config: ItemConfig | None) -> tuple[str, ...]:
    """Names of the shared node resources one instance takes a slot of."""
    if config is None or config.skip_resource_limits:
        return ()
    return tuple(dict.fromkeys(r.name for r in config.resources))


# --- reading --------------------------------------------------------------------------------------

_QUOTA_KEYS = (
    ("cpu_dmips_limit", "cpuDmipsLimit"),
    ("ram_limit", "ramLimit"),
    ("pids_limit", "pidsLimit"),
    ("no_file_limit", "noFileLimit"),
    ("tmp_limit", "tmpLimit"),
    ("state_limit", "stateLimit"),
    ("storage_limit", "storageLimit"),
    ("upload_speed", "uploadSpeed"),
    ("download_speed", "downloadSpeed"),
    ("upload_limit", "uploadLimit"),
    ("download_limit", "downloadLimit"),
)
_REQUEST_KEYS = (("cpu", "cpu"), ("ram", "ram"), ("storage", "storage"), ("state", "state"))


def _sizes(o: JsonObject, keys: tuple[tuple[str, str], ...]) -> dict[str, int | None]:
    return {attr: o.opt_int(key, minimum=0) for attr, key in keys}


def _runtime(value: Any, path: str) -> str:
    name = value if isinstance(value, str) else JsonObject.of(value, path).req_str("codename")
    if not name:
        raise ProtocolError(path, "empty runtime type")
    return name


def _resource(value: Any, path: str) -> ResourceRequest:
    if isinstance(value, str):
        name, mode = value, ""
    else:
        entry = JsonObject.of(value, path)
        name, mode = entry.req_str("name"), entry.opt_str("mode") or ""
    if not name:
        raise ProtocolError(path, "empty resource name")
    return ResourceRequest(name, mode)


def _run_parameters(o: JsonObject) -> RunParameters:
    return RunParameters(
        start_interval=o.opt("startInterval", parse_duration),
        start_burst=o.opt_int("startBurst", minimum=0),
        restart_interval=o.opt("restartInterval", parse_duration),
    )


def _policy(value: Any, path: str) -> BalancingPolicy:
    text = as_str(value, path)
    try:
        return BalancingPolicy(text.lower())
    except ValueError:
        raise ProtocolError(
            path, f"unknown balancing policy {shorten(text)} (expected enabled or disabled)"
        ) from None


def _object(value: Any, path: str) -> JsonObject:
    return JsonObject.of(value, path)


def read_item_config(o: JsonObject) -> ItemConfig:
    """An item config from an already decoded object (its path says where it sits)."""
    quotas = o.opt("quotas", _object)
    requests = o.opt("requestedResources", _object)
    run = o.opt("runParameters", _object)
    return ItemConfig(
        runtimes=o.array("runtimes", _runtime),
        quotas=Quotas() if quotas is None else Quotas(**_sizes(quotas, _QUOTA_KEYS)),
        requested_resources=None
        if requests is None
        else RequestedResources(**_sizes(requests, _REQUEST_KEYS)),
        resources=o.array("resources", _resource),
        run_parameters=RunParameters() if run is None else _run_parameters(run),
        balancing_policy=o.opt("balancingPolicy", _policy) or BalancingPolicy.ENABLED,
        skip_resource_limits=o.opt_bool("skipResourceLimits", False),
        author=o.opt_str("author") or "",
        hostname=o.opt_str("hostname"),
    )


def parse_item_config(raw: bytes | str | Mapping[str, Any], path: str = "$") -> ItemConfig:
    """Read an item config from JSON text or a decoded object.

    Args:
        raw: the blob's bytes, its text, or the object already decoded.
        path: where the object sits, for error messages (`$.itemConfigs["svc"]` in a scenario).

    Raises:
        ProtocolError: the JSON is malformed, or a field has the wrong type or a negative size;
            the message starts with the JSON path of the bad value.
    """
    value = decode(raw, max_bytes=MAX_ITEM_CONFIG_BYTES) if isinstance(raw, str | bytes) else raw
    return read_item_config(JsonObject.of(value, path))


# --- writing --------------------------------------------------------------------------------------


def _put_sizes(out: dict[str, Any], value: object, keys: tuple[tuple[str, str], ...]) -> None:
    for attr, key in keys:
        size = getattr(value, attr)
        if size is not None:
            out[key] = size


def item_config_json(config: ItemConfig) -> dict[str, Any]:
    """The JSON object of `config`, in AosCore's key order (what `aoscore cloud publish` writes).

    AosCore spells the CPU quota `cpuDMIPSLimit`; it reads keys ignoring case, as we do.
    """
    out: dict[str, Any] = {
        "author": config.author,
        "skipResourceLimits": config.skip_resource_limits,
    }
    if config.hostname:
        out["hostname"] = config.hostname
    out["balancingPolicy"] = str(config.balancing_policy)
    if config.runtimes:
        out["runtimes"] = [{"codename": name} for name in config.runtimes]
    params: dict[str, Any] = {}
    run = config.run_parameters
    if run.start_interval is not None:
        params["startInterval"] = format_duration(run.start_interval)
    if run.start_burst is not None:
        params["startBurst"] = run.start_burst
    if run.restart_interval is not None:
        params["restartInterval"] = format_duration(run.restart_interval)
    if params:
        out["runParameters"] = params
    quotas: dict[str, Any] = {}
    _put_sizes(quotas, config.quotas, (("cpu_dmips_limit", "cpuDMIPSLimit"), *_QUOTA_KEYS[1:]))
    out["quotas"] = quotas
    if config.requested_resources is not None:
        asked: dict[str, Any] = {}
        _put_sizes(asked, config.requested_resources, _REQUEST_KEYS)
        out["requestedResources"] = asked
    if config.resources:
        out["resources"] = [
            {"name": r.name, "mode": r.mode} if r.mode else {"name": r.name}
            for r in config.resources
        ]
    return out
