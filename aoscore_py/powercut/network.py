"""A three-node unit on an impaired network: every link it has goes through a loopback proxy
that imposes one network profile (netprofiles.py), and the unit must still converge on each
desired status it is given, with every status it made in the cloud's timeline, in order.

The links and how each is put behind its proxy (linkproxy.py, one per kind of traffic, all with
the same profile and seed, so their spikes and disconnects fall together as on one modem):

- the cloud link: the agent dials the proxy's port instead of the cloud's (`cloud_url`);
- the blob downloads: the cloud answers requestBlobUrls with URLs into the registry, built on
  its `--base`; given the proxy's address, every blob the CM fetches crosses the proxy;
- the SM links: each `aoscore sm` dials the proxy instead of the CM's port (`sm_dial`);
- the SMs' blob fetches: the CM's blob server listens on a port of ours (`--blob-port`) and
  puts the proxy's in the URLs it gives the SMs (`--blob-advertise`).

The scenario is the power-cut matrix's (scenarios.py): the install (two items, four instances
over three nodes), then svc-alpha upgraded blue-green, then a unit config of a greater version
(the CM checks and sets each node's config over the SM links). One `Row` per step. Each step
after the install is pushed when its traffic will meet the profile's next event (just inside a
spike, just before a disconnect); a step that still converged before meeting one is held until
the next has passed, and checked again.
"""

from __future__ import annotations

import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ..cloud.oci import OciImage
from ..cloud.ordering import in_unit_order, summary
from ..cloud.registry import Registry
from ..logs import get_logger
from ..protocol import DesiredStatus
from ..sm.docker_runtime import DockerRuntime
from . import interrupts
from .gate import free_port
from .linkproxy import LinkProxy, LinkStats
from .matrix import Images, converge, publish_images
from .netprofiles import Profile, profile
from .results import CONVERGED, Mark, Row
from .scenarios import ALPHA, desired, upgraded, with_bumped_unit_config
from .testbed import (
    TEST_RECONNECT,
    AgentLog,
    CloudProcess,
    Convergence,
    push,
    remove_unit_containers,
    save_desired,
)
from .unit import ThreeNodeUnit

log = get_logger("powercut.network")

STATUS_EVENTS = ("status.full", "status.delta")
PROCESS = "cloud link, blob downloads, SM links"
"""What a network row impairs (its `process` column)."""


@dataclass(frozen=True)
class Step:
    """One desired status of the scenario, and the image bytes it makes the CM download."""

    name: str
    status: DesiredStatus
    new_bytes: int
    collected: tuple[str, str] | None = None  # (item, version) gone from the CM's store after


def steps(images: Images) -> tuple[Step, ...]:
    """Install, upgrade, unit config: each converges from the previous one."""

    def size(*imgs: OciImage) -> int:
        return sum(len(b) for img in imgs for b in img.blobs.values())

    first = desired(images.items)
    upgrade = upgraded(images.items, images.alpha2)
    return (
        Step("install", first, size(images.alpha, images.beta)),
        Step("upgrade", upgrade, size(images.alpha2), collected=(ALPHA, "1.0.0")),
        Step("unit config", with_bumped_unit_config(upgrade), 0),
    )


def step_timeout_s(p: Profile, new_bytes: int) -> float:
    """How long a step may take to converge: a clean step's 90 s, plus three times the
    download at the profile's rate (stalls and spikes eat into it), two spikes and two
    keepalives (a spike outlasting the link's ping), two disconnect periods."""
    budget = 90.0
    if p.rate_bps:
        budget += 3 * 8 * new_bytes / p.rate_bps
    if p.spike_every_s:
        budget += 2 * p.spike_s + 2 * p.keepalive_s
    if p.disconnect_every_s:
        budget += 2 * p.disconnect_every_s
    return budget


@dataclass
class Links:
    """The three proxies of one run; `stats` adds up their counters (one disconnect of the
    network is an outage on each of the three)."""

    blobs: LinkProxy
    cloud: LinkProxy | None = None
    sm: LinkProxy | None = None
    sm_blobs: LinkProxy | None = None

    def all(self) -> list[LinkProxy]:
        return [p for p in (self.blobs, self.cloud, self.sm, self.sm_blobs) if p is not None]

    def stats(self) -> LinkStats:
        total = {f.name: 0 for f in fields(LinkStats)}
        for proxy in self.all():
            for name, value in vars(proxy.stats()).items():
                total[name] += value
        return LinkStats(**total)

    def set_profile(self, p: Profile, seed: int) -> None:
        """Impose `p` on every link at once, so their spikes and disconnects fall together."""
        named = (("blobs", self.blobs), ("cloud", self.cloud), ("sm", self.sm))
        for name, proxy in (*named, ("sm-blobs", self.sm_blobs)):
            if proxy is not None:
                proxy.set_profile(p, seed, salt=name)


def since(now: LinkStats, before: LinkStats) -> LinkStats:
    """The counters' growth from `before` to `now`."""
    return LinkStats(
        **{f.name: getattr(now, f.name) - getattr(before, f.name) for f in fields(now)}
    )


def met_event(p: Profile, stats: LinkStats) -> bool:
    """Whether traffic met one of the profile's events (trivially, when it has none): a spike
    held some of it, or a disconnect reset a connection. Loss stalls happen all the time on a
    lossy link and do not count."""
    if not (p.spike_every_s or p.disconnect_every_s):
        return True
    return stats.spiked > 0 or (stats.outages > 0 and stats.resets > 0)


def _converge(
    unit: ThreeNodeUnit, step: Step, runtime: DockerRuntime, timeout_s: float
) -> Convergence:
    """`matrix.converge` on the step's status, within `timeout_s`; with the step's
    `collected`, also until that version is gone from the CM's store."""
    return converge(unit, step.status, runtime, extra=step.collected, timeout_s=timeout_s)


def made_statuses(agent_log: AgentLog) -> list[int]:
    """The seq of every status the agent committed to its outbox, in the order it made them."""
    seqs = [r.get("seq") for r in agent_log.records() if r.get("event") in STATUS_EVENTS]
    return [s for s in seqs if isinstance(s, int)]


def timeline_problems(
    records: Sequence[dict], made: Sequence[int]
) -> tuple[dict[str, int], list[str]]:
    """The cloud's timeline against the statuses the unit made: its counts (cloud.ordering),
    and what is wrong: a status made and never recorded, a gap in a boot's seqs, one recorded
    twice, one arriving after a later one."""
    counts = summary(in_unit_order(records))
    seqs = [r.get("unitStatus", {}).get("seq") for r in records]
    problems = [f"{counts[k]} {k}" for k in ("missing", "duplicates", "late") if counts[k]]
    lost = sorted(set(made) - set(seqs))
    if lost:
        problems.append(f"statuses {lost[:10]} made but never recorded")
    if seqs != sorted(seqs, key=lambda s: -1 if s is None else s):
        problems.append("the cloud recorded statuses out of the unit's order")
    return counts, problems


def _timeline(unit: ThreeNodeUnit, timeout_s: float) -> tuple[dict[str, int], list[str]]:
    """Wait until every status the agent made so far reached the cloud (those in flight when
    the unit converged), then check the whole timeline."""
    assert unit.agent is not None
    made = made_statuses(AgentLog(unit.agent.log_path))
    deadline = time.monotonic() + timeout_s
    while True:
        state = unit.cloud.state
        try:
            records = state.timeline(unit.unit)
        finally:
            state.close()
        counts, problems = timeline_problems(records, made)
        if not problems or time.monotonic() >= deadline:
            return counts, problems
        time.sleep(0.5)


def _start(unit: ThreeNodeUnit) -> None:
    unit.start_agent()
    if unit.wait_listening():
        unit.start_missing_sms()


def _align(links: Links) -> None:
    """Sleep until a push now would meet the profile's next spike or disconnect."""
    schedule = links.cloud.schedule if links.cloud is not None else None
    at = schedule.meet_next_event(time.monotonic()) if schedule is not None else None
    if at is not None:
        log.info("network.aligning", in_s=round(at - time.monotonic(), 2), next="push")
        time.sleep(max(0.0, at - time.monotonic()))


def _hold(links: Links, timeout_s: float) -> bool:
    """Wait until the spike or disconnect under way, or the next, is over and the links had
    a moment to come back (False: the profile has none, or it would end after `timeout_s`)."""
    schedule = links.cloud.schedule if links.cloud is not None else None
    end = schedule.next_event_end(time.monotonic()) if schedule is not None else None
    if end is None or end - time.monotonic() > timeout_s:
        return False
    log.info("network.holding", until_s=round(end - time.monotonic(), 2), next="check again")
    time.sleep(max(0.0, end - time.monotonic()) + 1.0)
    return True


def _detail(stats: LinkStats, counts: dict[str, int], problems: list[str], held: bool) -> str:
    figures = (
        ("held through the next event; " if held else "")
        + f"{stats.stalled} stalls, {stats.spiked} spiked segments, {stats.outages} outages, "
        f"{stats.resets} resets, {stats.bytes_down >> 10} KiB down, {stats.bytes_up >> 10} KiB up; "
        f"timeline {counts.get('statuses', 0)} statuses in {counts.get('boots', 0)} boot(s), "
        f"{counts.get('missing', 0)} missing, {counts.get('late', 0)} late, "
        f"{counts.get('duplicates', 0)} duplicates"
    )
    return "; ".join([*problems[:3], figures])


_FIGURE = re.compile(
    r"(\d+) (stalls|spiked segments|outages|resets|statuses|missing|late|duplicates)\b"
)


def figures(row: Row) -> dict[str, int]:
    """The counters a network row's detail holds (`_detail`), by name: stalls, spiked,
    outages, resets, statuses, missing, late, duplicates."""
    return {name.split()[0]: int(count) for count, name in _FIGURE.findall(row.detail)}


def _run_unit(
    p: Profile,
    seed: int,
    cloud: CloudProcess,
    images: Images,
    work: Path,
    runtime: DockerRuntime,
    links: Links,
) -> list[Row]:
    unit_id = f"net-{p.name}-{uuid.uuid4().hex[:8]}"
    blob_port = free_port()
    links.sm_blobs = LinkProxy("127.0.0.1", blob_port)
    advertised = f"127.0.0.1:{links.sm_blobs.start()}"
    extra = ("--removed-ttl", "0", "--keepalive", f"{p.keepalive_s:g}", *TEST_RECONNECT)
    extra += ("--blob-port", str(blob_port), "--blob-advertise", advertised)
    unit = ThreeNodeUnit(unit_id, work / unit_id, cloud, agent_extra=extra)
    ws = urlsplit(cloud.ws_url)
    links.cloud = LinkProxy(ws.hostname or "127.0.0.1", ws.port or 80)
    links.sm = LinkProxy("127.0.0.1", unit.port)
    rows: list[Row] = []
    try:
        links.cloud.start()
        links.sm.start()
        links.set_profile(p, seed)
        unit.cloud_url = urlunsplit(ws._replace(netloc=f"127.0.0.1:{links.cloud.port}"))
        unit.sm_dial = f"127.0.0.1:{links.sm.port}"
        log.info("network.unit", unit=unit_id, profile=p.describe(), seed=seed)
        for index, step in enumerate(steps(images)):
            timeout_s = step_timeout_s(p, step.new_bytes)
            if index > 0:
                _align(links)
            started, before = time.monotonic(), links.stats()
            if index == 0:
                save_desired(cloud.state, unit_id, step.status)
                _start(unit)
            else:
                answer = push(cloud, unit_id, step.status, timeout_s=30.0 + 2 * p.spike_s)
                if not answer.get("ok"):
                    log.warning("network.push_unanswered", unit=unit_id, answer=answer, next="wait")
            result = _converge(unit, step, runtime, timeout_s)
            seconds = round(time.monotonic() - started, 2)
            held = result.ok and not met_event(p, since(links.stats(), before))
            if held and _hold(links, timeout_s):
                result = _converge(unit, step, runtime, timeout_s)
            counts, problems = _timeline(unit, 30.0 + 2 * p.keepalive_s)
            if index == 0 and links.sm_blobs is not None and not links.sm_blobs.stats().bytes_down:
                problems.append("the SMs fetched no blob through their proxy")
            stats = since(links.stats(), before)
            converged = result.ok and not problems
            detail = _detail(stats, counts, [*result.problems, *problems], held)
            log.info(
                "network.step",
                unit=unit_id,
                step=step.name,
                converged=converged,
                seconds=seconds,
                detail=detail,
            )
            marks = (Mark(seconds, CONVERGED),) if converged else ()
            rows.append(
                Row(
                    f"{p.name} {step.name}",
                    PROCESS,
                    met_event(p, stats),
                    converged,
                    seconds,
                    detail,
                    kind="network",
                    timeline=marks,
                )
            )
            if not converged:
                break
    finally:
        stopped = unit.stop_all()
        if stopped:
            log.warning("network.unclean_stop", unit=unit_id, codes=stopped)
        remove_unit_containers(runtime, unit_id)
    return rows


def run_network(
    profile_name: str, work_dir: Path | None, *, scale: float = 1.0, seed: int = 0
) -> list[Row]:
    """Run the scenario (install, upgrade, unit config) on a three-node unit whose cloud link,
    blob downloads and SM links all cross an impaired network, and check each step.

    Profiles: `cellular` (256 kbit/s each way, 2 % loss, jitter, a 30 s latency spike every
    200 s), `flaky` (every connection reset once a minute), `clean` (none). `scale` compresses
    a profile's time (0.1: 3 s spikes every 20 s at 2.56 Mbit/s); `seed` fixes its randomness,
    so a run can be repeated. A step passes when the unit converged on it and the cloud's
    timeline holds every status the unit made, once each, in the unit's order, none missing.
    The agent's keepalive is raised above a spike each way (as docs/cloud-link.md advises for
    such links) and it reconnects on the test rigs' schedule (`TEST_RECONNECT`).

    Returns:
        One row per step (kind `network`), stopping at the first that did not converge:
        `seconds` is its time to converge (before any hold), `killed` whether its traffic met
        a spike or a disconnect (always, for a profile without them), `converged` whether it
        converged and stayed so through that event with a complete, ordered timeline, and
        `detail` the proxies' counters for the step and the timeline's.

    Raises:
        LocalError: no profile has that name, or the scale is not positive.
    """
    p = profile(profile_name, scale)
    interrupts.install()  # SIGTERM unwinds like SIGINT, so the proxies and processes are stopped
    work = work_dir or Path(tempfile.mkdtemp(prefix=f"aoscore-network-{profile_name}-"))
    work.mkdir(parents=True, exist_ok=True)
    runtime = DockerRuntime()
    runtime.ping()
    log.info("network.run", profile=p.describe(), seed=seed, work=str(work))
    try:
        with Registry(work / "registry") as registry:
            url = urlsplit(registry.url)
            blobs = LinkProxy(url.hostname or "127.0.0.1", url.port or 80)
            links = Links(blobs)
            blobs.start()
            base = ("--base", blobs.url_for("http"), "--keepalive", f"{p.keepalive_s:g}")
            cloud = CloudProcess(work / "cloud", registry.url, extra=base)
            try:
                cloud.start()
                images = publish_images(cloud, registry.url)
                return _run_unit(p, seed, cloud, images, work, runtime, links)
            finally:
                cloud.stop()
                for proxy in links.all():
                    proxy.stop()
    finally:
        runtime.close()
