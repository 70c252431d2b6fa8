"""What every command group shares: exit codes, validators, common options.

Exit codes: 0 success; 1 the operation failed (the message says why); 2 bad usage or bad input
(a bad argument, a file that is not a valid message), with a message naming the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..errors import AosError, ConfigError

DEFAULT_DATA_DIR = "/var/lib/aoscore"
DEFAULT_CLOUD_DIR = "/var/lib/aoscore-cloud"
_SYSTEM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_IMAGE_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


def fail(message: str, code: int = 1) -> None:
    line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    click.echo(f"aoscore: {line}", err=True)
    sys.exit(code)


@contextlib.contextmanager
def exit_codes(interrupted: str = "interrupted") -> Iterator[None]:
    """Turn our errors into the exit codes above, with one line on stderr and no traceback."""
    try:
        yield
    except ConfigError as exc:
        fail(exc.message, 2)
    except AosError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        fail(interrupted, 130)
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        fail(f"the agent's store cannot be read: {exc}")


def _is_database_error(exc: BaseException) -> bool:
    """SQLite's errors, raw or as peewee wraps them (peewee is not imported for this: if it is
    not loaded, the error is not one of its)."""
    peewee = sys.modules.get("peewee")
    return isinstance(exc, sqlite3.Error) or (
        peewee is not None and isinstance(exc, peewee.DatabaseError)
    )


def run(coro: Any) -> Any:
    with exit_codes():
        return asyncio.run(coro)


def ws_url(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not re.match(r"^wss?://[^/\s]+", value or ""):
        raise click.BadParameter(f"{value!r} is not a ws:// or wss:// URL")
    return value


def system_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    if not _SYSTEM_ID.match(value or ""):
        raise click.BadParameter(
            f"{value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def positive(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and value <= 0:
        raise click.BadParameter(f"must be greater than 0, got {value}")
    return value


log_options = [
    click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"]),
        default="info",
        show_default=True,
    ),
    click.option(
        "--log-format", type=click.Choice(["logfmt", "json"]), default="logfmt", show_default=True
    ),
]


def with_logs(fn: Any) -> Any:
    for option in reversed(log_options):
        fn = option(fn)
    return fn


data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="AOSCORE_DATA_DIR",
    show_envvar=True,
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Where the agent keeps its state.",
)
cloud_dir_option = click.option(
    "--cloud-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="AOSCORE_CLOUD_DIR",
    show_envvar=True,
    default=DEFAULT_CLOUD_DIR,
    show_default=True,
    help="The reference cloud's state folder.",
)


def blob_serving_options(fn: Any) -> Any:
    """How the cloud serves blobs: normally, or with a fault for tests and demos."""
    options = [
        click.option(
            "--signing",
            type=click.Choice(["valid", "unsigned", "wrong"]),
            default="valid",
            show_default=True,
            help="Sign blobs, leave them unsigned, or sign other bytes.",
        ),
        click.option("--alg", default=None, help="Signature algorithm, e.g. RSA/SHA384/PSS."),
        click.option("--base", default=None, help="Serve blob URLs from this base URL."),
        click.option("--dead-first", is_flag=True, help="Put a dead URL first in each list."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn
