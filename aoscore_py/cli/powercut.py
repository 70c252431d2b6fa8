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
    "rows, or POINT:N for its N-th arrival (default: every row).",
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
    """Kill the agent at every crash point and check that the unit still converges.

    The rows come from the crash-point registry: every point a component declares, each in
    the scenario that reaches it (an install, an upgrade that retires a version, or an
    injected fault for the sticky failed phase).
    """
    from ..powercut.matrix import CASES, CRASH_POINTS, run_matrix, select_cases

    if list_rows:
        for case in CASES:
            fault = f"  (after a fault at {case.fault})" if case.fault else ""
            click.echo(f"{case.spec:<36} {case.scenario}{fault}")
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
