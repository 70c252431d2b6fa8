"""`scripts/bench powercut`: the power-cut laboratory's figures in one run.

- The crash-point matrix under real power loss (`aoscore powercut --fs lossy`): how many rows,
  how many converged.
- Cuts at random moments (`aoscore powercut --fs lossy --random N --seed S`): how many, how
  many converged.
- `lossy_overhead_ratio`: one update cycle (an upgrade that downloads svc-alpha's new version
  and replaces its two instances blue-green) on the lossy file systems over the same cycle on
  plain folders, in the same run, alternating plain and lossy units; medians. A cycle is timed
  from the push to the first moment the unit is converged on the new status (polled every
  0.1 s).
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path

import click
import orjson

from aoscore_py.logs import configure as configure_logs
from aoscore_py.powercut.matrix import ALL_ROWS, Lab, converge, open_lab, run_matrix
from aoscore_py.powercut.power import PoweredUnit
from aoscore_py.powercut.randomcuts import run_random
from aoscore_py.powercut.scenarios import desired, upgraded
from aoscore_py.powercut.testbed import push, remove_unit_containers, save_desired
from aoscore_py.powercut.unit import ThreeNodeUnit
from aoscore_py.protocol import DesiredStatus
from benchlib import json_option

CYCLE_TIMEOUT_S = 120.0


def _cycle(lab: Lab, fs: str) -> float:
    """One upgrade cycle on a fresh unit with its data on `fs`: seconds from the push to
    convergence (the install before it is not timed)."""
    unit = ThreeNodeUnit(
        f"bench-{uuid.uuid4().hex[:8]}",
        lab.work / f"cycle-{fs}-{uuid.uuid4().hex[:4]}",
        lab.cloud,
        agent_extra=("--removed-ttl", "0"),
    )
    power = PoweredUnit(unit, fs)
    first = desired(lab.images.items)
    then = upgraded(lab.images.items, lab.images.alpha2)
    try:
        power.mount_all()
        save_desired(lab.cloud.state, unit.unit, first)
        unit.start_agent()
        if unit.wait_listening():
            unit.start_missing_sms()
        _until_converged(unit, first, lab)
        save_desired(lab.cloud.state, unit.unit, then)
        started = time.monotonic()
        push(lab.cloud, unit.unit, then)
        _until_converged(unit, then, lab)
        return time.monotonic() - started
    finally:
        power.stop_all()
        remove_unit_containers(lab.runtime, unit.unit)


def _until_converged(unit: ThreeNodeUnit, ds: DesiredStatus, lab: Lab) -> None:
    """Converged on `ds`, polled finely (the time is the benchmark's figure)."""
    result = converge(unit, ds, lab.runtime, timeout_s=CYCLE_TIMEOUT_S, poll_s=0.1)
    if not result.ok:
        raise click.ClickException(f"no convergence: {'; '.join(result.problems[:3])}")


@click.command("powercut")
@json_option
@click.option(
    "--points",
    default=None,
    help="Comma-separated matrix rows (default: every row, node power losses included).",
)
@click.option(
    "--random", "random_cuts", type=click.IntRange(0, 1000), default=30, show_default=True
)
@click.option("--seed", type=int, default=1, show_default=True, help="The random cuts' seed.")
@click.option(
    "--cycles",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Timed update cycles on each file system, alternating.",
)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def powercut(
    json_path: Path,
    points: str | None,
    random_cuts: int,
    seed: int,
    cycles: int,
    work_dir: Path | None,
) -> None:
    """The lossy matrix, random cuts and the lossy file system's overhead on an update cycle."""
    configure_logs("warning")
    work = work_dir or Path(tempfile.mkdtemp(prefix="aoscore-bench-powercut-"))
    begun = time.monotonic()
    timings: dict[str, list[float]] = {"plain": [], "lossy": []}
    with open_lab(work / "cycles") as lab:
        for _ in range(cycles):
            for fs in ("plain", "lossy"):
                timings[fs].append(round(_cycle(lab, fs), 3))
                print(f"cycle on {fs}: {timings[fs][-1]:.2f} s", flush=True)
    specs = [p.strip() for p in points.split(",")] if points else list(ALL_ROWS)
    rows = run_matrix(specs, work / "matrix", fs="lossy")
    random_rows = run_random(random_cuts, seed, work / "random", fs="lossy") if random_cuts else []
    plain, lossy = statistics.median(timings["plain"]), statistics.median(timings["lossy"])
    result = {
        "points": len(rows),
        "converged": sum(r.passed for r in rows),
        "random_cuts": len(random_rows),
        "random_converged": sum(r.converged for r in random_rows),
        "lossy_overhead_ratio": round(lossy / plain, 3),
        "cycle_s": {"plain": timings["plain"], "lossy": timings["lossy"]},
        "cycle_median_s": {"plain": round(plain, 3), "lossy": round(lossy, 3)},
        "not_converged": [r.point for r in [*rows, *random_rows] if not r.passed],
        "seed": seed,
        "seconds": round(time.monotonic() - begun, 1),
        "work_dir": str(work),
    }
    json_path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps({k: result[k] for k in list(result)[:5]}).decode())
    print(f"wrote {json_path}")
