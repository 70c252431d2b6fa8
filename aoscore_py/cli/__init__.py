"""The `aoscore` command: one module per command group, option parsing only; the work is done
by the domain packages each command calls.

Exit codes: 0 success; 1 the operation failed (the message says why); 2 bad usage or bad input
(a bad argument, a file that is not a valid message), with a message naming the problem.
"""

from __future__ import annotations

import click

from .agent import agent
from .cloud import cloud
from .images import images
from .launcher import launcher
from .powercut import powercut
from .protocol import protocol
from .sm import sm
from .status import status
from .unit import unit


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="aoscore-py")
def cli() -> None:
    """aoscore: an edge agent that keeps a unit converged on its cloud's desired status."""
    from ..localsm import die_with_parent

    die_with_parent()  # a child the agent started (its node's SM) goes when the agent goes


for command in (agent, cloud, images, launcher, powercut, protocol, sm, status, unit):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="aoscore")
