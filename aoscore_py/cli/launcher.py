"""`aoscore launcher plan`: where the launcher would run each instance, offline.

Made for operators: SCENARIO.json describes the nodes (as a v7 unitStatus reports them), the
desired status, optionally item configs, image platforms, where instances run now. The plan is
printed as the instances section of a v7 unitStatus. Bad input exits 2 with the JSON path of
the bad value; nothing is contacted, nothing is written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson

from ..cm.launcher.scenario import MAX_SCENARIO_BYTES, instances_json, plan, read_scenario
from ..errors import ProtocolError
from .common import fail

EXIT_INVALID = 2

launcher = click.Group("launcher", help="Placement of instances on the unit's nodes.")


@launcher.command("plan")
@click.argument(
    "scenario", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="SCENARIO"
)
def plan_command(scenario: Path) -> None:
    """Place the desired instances of SCENARIO (a JSON file) by AosCore's launcher rules.

    SCENARIO is {"nodes": [v7 unitStatus node objects], "desiredStatus": {...},
    "itemConfigs": {ITEM: item config}, "imagePlatforms": {ITEM: {"os", "architecture",
    "variant"}}, "current": [{"item": {"id"}, "subject": {"id"}, "instance": N,
    "node": {"codename"}}]}; only nodes and desiredStatus are required. Prints
    {"instances": [...]}: placed instances activating with their node and runtime, the others
    failed with an errorInfo saying why.
    """
    try:
        with scenario.open("rb") as handle:
            raw = handle.read(MAX_SCENARIO_BYTES + 1)
    except OSError as exc:
        fail(f"{scenario}: cannot read: {exc.strerror or exc}", EXIT_INVALID)
    try:
        statuses = plan(read_scenario(raw))
    except ProtocolError as exc:
        fail(f"{scenario}: {exc.path}: {exc.reason}", EXIT_INVALID)
    sys.stdout.buffer.write(orjson.dumps(instances_json(statuses), option=orjson.OPT_INDENT_2))
    sys.stdout.buffer.write(b"\n")
