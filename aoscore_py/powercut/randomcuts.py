"""Cuts at pseudo-random moments: not only where a crash point is, but anywhere in an update.

One three-node unit lives through a scenario of successive desired statuses. For each step the
cloud pushes the step's status, and after a pseudo-random delay the power goes: either the CM
(killed, its disk cut) or a whole node (its SM and containers killed, its disk cut). The victim
boots again and the unit must converge on the step's status before the next step. The schedule
(delays and victims) comes from the seed alone, so the same seed gives the same schedule; what
the cut meets at that moment still varies with timing, which is the point.

The steps differ from each other so that each one has work to cut: the unit config's version
goes up at every step (each node checks and stores its config), svc-beta alternates between two
instances and one, and svc-alpha moves to its new version half-way.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from ..cloud.oci import OciImage
from ..errors import AosError
from ..logs import get_logger
from ..protocol import DesiredStatus
from .invariants import EngineEvents
from .matrix import (
    Lab,
    RowClock,
    acked_after_cut,
    converge,
    crashes_counted,
    exited_on_their_own,
    invariant_problems,
    open_lab,
)
from .power import PoweredUnit
from .results import CONVERGED, CUT, KILLED, RESTARTED, Row
from .scenarios import ALPHA, BETA, NODES, desired, unit_config
from .testbed import Convergence, push, remove_unit_containers, save_desired
from .unit import CM, ThreeNodeUnit

log = get_logger("powercut")

MAX_DELAY_S = 4.0
"""The latest a cut comes after its step's push: about one update cycle of the scenario."""
CM_SHARE = 0.5
"""How often the victim is the CM; the rest is spread over the nodes."""


@dataclass(frozen=True)
class RandomCut:
    """One step of the schedule: cut `victim` (the CM or a node) `delay_s` after the push."""

    step: int
    victim: str
    delay_s: float

    @property
    def name(self) -> str:
        who = "agent (CM)" if self.victim == CM else f"node {self.victim}"
        return f"random-{self.step + 1} {who} +{self.delay_s:.2f}s"


def schedule(n: int, seed: int, max_delay_s: float = MAX_DELAY_S) -> list[RandomCut]:
    """The n cuts a seed gives: pure, and the same for the same seed."""
    rng = random.Random(seed)
    cuts = []
    for step in range(n):
        victim = CM if rng.random() < CM_SHARE else rng.choice(NODES)
        cuts.append(RandomCut(step, victim, round(rng.uniform(0.0, max_delay_s), 2)))
    return cuts


def step_status(
    images: Mapping[str, OciImage], alpha2: OciImage, step: int, n: int
) -> DesiredStatus:
    """The desired status of step `step` of `n` (see the module's docstring)."""
    items = {**images, ALPHA: alpha2} if step >= n // 2 else dict(images)
    ds = desired(items, version="2.0.0" if step >= n // 2 else "1.0.0")
    beta = 1 if step % 2 else 2
    instances = tuple(
        replace(i, num_instances=beta) if i.item.id == BETA else i for i in ds.instances
    )
    return replace(ds, instances=instances, unit_config=unit_config(f"1.{step + 1}.0"))


def run_random(
    n: int, seed: int, work_dir: Path | None, *, fs: str = "lossy", torn: bool = False
) -> list[Row]:
    """Cut `n` times at the moments `schedule(n, seed)` gives; print a line per cut and
    return the rows (kind `random`)."""
    cuts = schedule(n, seed)
    rows: list[Row] = []
    with open_lab(work_dir) as lab:
        disk = "lossy file systems" if fs == "lossy" else "plain disks"
        print(f"{n} cuts at random moments, seed {seed}; data on {disk}", flush=True)
        width = max(len(c.name) for c in cuts)
        print(f"{'cut':<{width}}  converged  seconds  detail", flush=True)
        unit = ThreeNodeUnit(f"pc-{uuid.uuid4().hex[:8]}", lab.work / "random", lab.cloud)
        power = PoweredUnit(unit, fs, torn, seed)
        events = EngineEvents(lab.runtime.client, unit.unit).start()
        try:
            power.mount_all()
            rows = _run(lab, power, events, cuts, fs, width)
        finally:
            events.stop()
            power.stop_all()
            remove_unit_containers(lab.runtime, unit.unit)
        passed = sum(r.passed for r in rows)
        print(f"{passed}/{len(rows)} converged; work folder {lab.work}", flush=True)
    return rows


def _run(
    lab: Lab, power: PoweredUnit, events: EngineEvents, cuts: list[RandomCut], fs: str, width: int
) -> list[Row]:
    unit = power.unit
    n = len(cuts)
    images = lab.images
    first = step_status(images.items, images.alpha2, 0, n)
    save_desired(lab.cloud.state, unit.unit, first)
    unit.start_agent()
    if unit.wait_listening():
        unit.start_missing_sms()
    rows = []
    for cut in cuts:
        ds = step_status(images.items, images.alpha2, cut.step, n)
        try:
            row = _one_cut(lab, power, events, cut, ds, fs)
        except (AosError, OSError, TimeoutError) as exc:
            log.error("powercut.cut_failed", cut=cut.name, exc_info=True, next="next cut")
            why = f"the cut could not run: {type(exc).__name__}: {exc}"
            row = Row(cut.name, _who(cut.victim), False, False, 0.0, why, kind="random", fs=fs)
            _revive(power, lab)
        rows.append(row)
        print(
            f"{row.point:<{width}}  {'yes' if row.converged else 'NO':<9}  {row.seconds:>7.2f}  "
            f"{row.detail}".rstrip(),
            flush=True,
        )
        if not row.converged:
            log.warning("powercut.random_not_converged", cut=row.point, next="next cut")
    return rows


def _one_cut(
    lab: Lab, power: PoweredUnit, events: EngineEvents, cut: RandomCut, ds: DesiredStatus, fs: str
) -> Row:
    """Push the step's status (the first step's is already the cloud's), wait, cut, boot,
    converge."""
    unit = power.unit
    clock = RowClock()
    mark = clock.mark

    if cut.step > 0:
        save_desired(lab.cloud.state, unit.unit, ds)
        try:
            push(lab.cloud, unit.unit, ds, timeout_s=10.0)
        except Exception as exc:  # the cloud sends the stored status again at the next connect
            log.warning("powercut.push_failed", unit=unit.unit, error=str(exc), next="cutting")
    time.sleep(max(0.0, cut.delay_s - (time.monotonic() - clock.t0)))
    early = exited_on_their_own(unit, None)
    victim = unit.process(cut.victim)
    killed = victim is not None and victim.proc.poll() is None
    if cut.victim == CM:
        power.cut(CM)
        early += acked_after_cut(unit)
    else:
        power.node_power_loss(cut.victim, lab.runtime)
    mark(KILLED, cut.victim)
    if power.lossy:
        mark(CUT, cut.victim)
    # A restarted CM must report again (counted after the cut: a status sent just before the
    # kill is not a report of the new start); a node that comes back running what it ran
    # before changes nothing the cloud is told (its instances may even be none).
    reported = unit.reported() if cut.victim == CM else -1
    started = time.monotonic()
    if cut.victim == CM:
        unit.start_agent()
        unit.wait_listening()
    else:
        unit.start_sm(cut.victim)
    unit.start_missing_sms()
    mark(RESTARTED, cut.victim)
    result = converge(unit, ds, lab.runtime, reported=reported)
    seconds = round(time.monotonic() - started, 2)
    problems = [*early, *result.problems]
    if cut.victim != CM:
        problems += crashes_counted(unit, cut.victim)
    if result.ok:
        problems += invariant_problems(unit, events)
    result = Convergence(not problems, tuple(problems))
    if result.ok:
        mark(CONVERGED)
    return Row(
        cut.name,
        _who(cut.victim),
        killed,
        result.ok,
        seconds,
        "; ".join(result.problems[:3]),
        kind="random",
        fs=fs,
        timeline=clock.timeline(unit),
    )


def _who(victim: str) -> str:
    return "agent (CM)" if victim == CM else f"node {victim}"


def _revive(power: PoweredUnit, lab: Lab) -> None:
    """After a cut that could not run to its end: mount what is not mounted and start what is
    not running, so that the next cut meets a whole unit."""
    try:
        power.mount_all()
        unit = power.unit
        agent = unit.process(CM)
        if agent is None or agent.proc.poll() is not None:
            unit.start_agent()
            unit.wait_listening()
        unit.start_missing_sms()
    except (AosError, OSError) as exc:
        log.error("powercut.revive_failed", unit=power.unit.unit, error=str(exc), next="next cut")
