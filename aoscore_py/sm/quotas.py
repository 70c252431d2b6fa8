"""An item config's quotas as the limits Docker enforces on the item's containers.

AosCore's SM writes an instance's quotas into its OCI runtime config (aos_core_cpp
`src/sm/launcher/runtimes/container/instance.cpp`, `ApplyItemConfig`); ours hands the same
figures to Docker when it creates the container:

- `ramLimit` (bytes) is the memory limit (`HostConfig.Memory`); swap is left to the engine, as
  AosCore sets only the memory limit.
- `pidsLimit` is the pids limit (`HostConfig.PidsLimit`).
- `cpuDmipsLimit` becomes a share of the CPUs (`HostConfig.NanoCpus`). AosCore's rule is
  quota = limit x period x cores / node max DMIPS, never under 1 % of one core; in nano-CPUs
  that is limit / max DMIPS x cores x 1e9. The node's max DMIPS is the SM's `--max-dmips`;
  when it is not given, each of the engine's CPUs counts `DEFAULT_DMIPS_PER_CORE` (so the
  formula reads limit / DEFAULT_DMIPS_PER_CORE CPUs). Docker refuses more CPUs than the host
  has, so the share is capped at all of them.

AosCore applies quotas whatever `skipResourceLimits` says (that flag only spares placement), and
so do we. Its other quotas (open files, /tmp, storage, state, traffic) are not applied here.

Pure functions: the manager reads the item config blob and the engine's CPU count.
"""

from __future__ import annotations

from ..errors import ProtocolError
from ..nodes.itemconfig import ItemConfig, parse_item_config
from .types import ContainerLimits

DEFAULT_DMIPS_PER_CORE = 10_000
"""DMIPS one CPU of the engine counts for when the node's max DMIPS is not given: AosCore's
default IAM config gives a node 10000 DMIPS, and we read that as one core's worth."""

MIN_NANO_CPUS = 10_000_000
"""The smallest CPU share: AosCore's minimum quota of 1000 us per 100000 us period (1 % of a
core), which is also the smallest Docker accepts."""

NANO = 1_000_000_000


def read_item_config(raw: bytes, digest: str) -> ItemConfig:
    """The item config blob `digest`, parsed.

    Raises:
        ProtocolError: invalidArgument; the message names the blob, then the JSON path of the
            bad value (`aosItemConfig sha256:...: $.quotas.ramLimit: expected ...`).
    """
    try:
        return parse_item_config(raw)
    except ProtocolError as exc:
        raise ProtocolError(f"aosItemConfig {digest}", exc.message, code=exc.code) from None


def nano_cpus(dmips_limit: int, max_dmips: int | None, cpus: int) -> int:
    """The CPU share, in nano-CPUs, of `dmips_limit` on a node of `max_dmips` with `cpus` CPUs.

    Integer arithmetic (no float rounding), at least `MIN_NANO_CPUS`, at most every CPU.

    Args:
        dmips_limit: the item's `cpuDmipsLimit`.
        max_dmips: the node's CPU in DMIPS; None or 0: `DEFAULT_DMIPS_PER_CORE` per CPU.
        cpus: the engine's CPU count (at least 1 is assumed).
    """
    cpus = max(1, cpus)
    if max_dmips:
        share = dmips_limit * cpus * NANO // max_dmips
    else:
        share = dmips_limit * NANO // DEFAULT_DMIPS_PER_CORE
    return max(MIN_NANO_CPUS, min(share, cpus * NANO))


def container_limits(
    config: ItemConfig | None, max_dmips: int | None, cpus: int
) -> ContainerLimits:
    """The limits of a container of an item with item config `config` (None: no limits).

    Args:
        config: the item config its manifest names, if any.
        max_dmips: the node's CPU in DMIPS, if known (see `nano_cpus`).
        cpus: the engine's CPU count.
    """
    if config is None:
        return ContainerLimits()
    quotas = config.quotas
    cpu = quotas.cpu_dmips_limit
    return ContainerLimits(
        memory=quotas.ram_limit,
        pids=quotas.pids_limit,
        nano_cpus=None if cpu is None else nano_cpus(cpu, max_dmips, cpus),
    )
