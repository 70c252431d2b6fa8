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
@click.option("--points", default=None, help="Comma-separated crash points (default: all).")
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to keep the run's files (default: a new temporary folder).",
)
def powercut(json_path: Path | None, points: str | None, work_dir: Path | None) -> None:
    """Kill the agent at every crash point and check that the unit still converges."""
    from ..powercut import CRASH_POINTS, run_matrix

    selected = list(CRASH_POINTS)
    if points:
        selected = [p.strip() for p in points.split(",") if p.strip()]
        unknown = [
            p for p in selected if p.split(":")[0] not in {c.split(":")[0] for c in CRASH_POINTS}
        ]
        if unknown:
            raise click.BadParameter(f"unknown crash points {unknown}", param_hint="--points")
    logs.configure("warning")
    with exit_codes("interrupted; what the matrix started was stopped"):
        ok = run_matrix(selected, json_path, work_dir)
    sys.exit(0 if ok else 1)
