"""What `--help` tells a new user: every option read from the environment names its variable,
and `cloud timeline` says what --unit is and what --check prints."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from aoscore_py.cli import cli


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


ENV_COMMANDS = [c for c in _commands(cli) if c[0] in ("agent", "sm", "cloud")]


@pytest.mark.parametrize("command", ENV_COMMANDS, ids=" ".join)
def test_every_option_with_an_envvar_shows_it(command: tuple[str, ...]) -> None:
    target: click.Command = cli
    for name in command:
        assert isinstance(target, click.Group)
        target = target.commands[name]
    for param in target.params:
        if isinstance(param, click.Option) and param.envvar:
            assert param.show_envvar, f"{' '.join(command)} {param.opts[0]}"
    # The command itself, not through `cli`, whose callback sets up the process for children.
    result = CliRunner().invoke(target, ["--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # as wrapped for any terminal
    for param in target.params:
        if isinstance(param, click.Option) and isinstance(param.envvar, str):
            assert f"env var: {param.envvar}" in text


def test_timeline_help_says_what_unit_is_and_what_check_prints() -> None:
    timeline = cli.commands["cloud"].commands["timeline"]  # type: ignore[attr-defined]
    result = CliRunner().invoke(timeline, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "The systemId of the unit" in text
    assert "boot=ID seq=N" in text and "missing=N" in text


def test_serve_help_says_the_ports_are_kept() -> None:
    serve = cli.commands["cloud"].commands["serve"]  # type: ignore[attr-defined]
    result = CliRunner().invoke(serve, ["--help"])
    assert "kept in cloud.db" in " ".join(result.output.split())
