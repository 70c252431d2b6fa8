"""Helpers of scripts/bench.py for the benchmarks that need more than a few functions: one module
per job, imported by bench.py (run as a script, so this folder's parent is on sys.path)."""

from pathlib import Path

import click

json_option = click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Write the results here.",
)
"""Every benchmark writes its figures to the file given with --json."""
