"""`aoscore powercut`: the power-cut laboratory."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .. import logs
from .common import exit_codes


@click.command()
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the rows as a JSON list.",
)
@click.option(
    "--points",
    default=None,
    help="Comma-separated rows to run: a row as --list prints it, a bare point for all its "
    "rows, POINT:N for its N-th arrival, POINT[:N]@NODE to kill that node's SM instead "
    "(default: every row).",
)
@click.option("--list", "list_rows", is_flag=True, help="Print the matrix's rows and exit.")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep the run's files (default: a new temporary folder).",
)
def powercut(
    json_path: Path | None, points: str | None, list_rows: bool, work_dir: Path | None
) -> None:
    """Kill the CM or an SM at every crash point of a three-node unit and check that the
    unit still converges.

    The unit is the agent as CM only (--no-local-sm) and one `aoscore sm` per node (node-1,
    node-2, node-3), with mutual TLS from a unit PKI of its own, on this machine's Docker
    engine, against a reference cloud and registry the matrix starts. The rows come from the
    crash-point registry: every point a component declares, each in the scenario that reaches
    it (an install spread over the three nodes, an upgrade that replaces and retires a version,
    a unit config of a greater version, a spoiled store, or an injected fault for the sticky
    failed phase). The SM's points kill node-2's SM; every other point kills the agent; the
    points both pass have a row for each.

    A row passes when the armed process died by SIGKILL at its point, was started again
    unarmed, and the unit converged: exactly the desired containers, once each, at their
    versions, on nodes with room for them; items installed; the unit config installed on
    every node; the cloud's last full status all active with every node connected.

    Prints one line per row (row, process killed, killed, converged, seconds, detail).
    Exit codes: 0 every row passed; 1 a row did not; 2 bad usage; 130 interrupted.
    """
    from ..powercut.matrix import CASES, CRASH_POINTS, describe, run_matrix, select_cases

    if list_rows:
        width = max(len(case.row) for case in CASES)
        click.echo(f"{'row':<{width}}  {'kills':<12}  scenario")
        for case in CASES:
            fault = f" (after a fault at {case.fault})" if case.fault else ""
            click.echo(f"{case.row:<{width}}  {describe(case.process):<12}  {case.scenario}{fault}")
        return
    selected = list(CRASH_POINTS)
    if points:
        selected = [p.strip() for p in points.split(",") if p.strip()]
        try:
            select_cases(selected)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--points") from None
    logs.configure("warning")
    with exit_codes("interrupted; what the matrix started was stopped"):
        ok = run_matrix(selected, json_path, work_dir)
    sys.exit(0 if ok else 1)
