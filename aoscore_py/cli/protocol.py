"""`aoscore protocol check`: validate protocol files offline, as the unit would read them.

Made for operators and for the conformance data: one line per file, `ok <type>` on stdout or
`FILE: <json path>: <reason>` on stderr, exit 0 only if every file is valid. It never prints a
traceback and never reads more than the size limit (plus one byte) of any file.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

import click

from aoscore_py.errors import ProtocolError
from aoscore_py.protocol import codec
from aoscore_py.protocol._json import too_large
from aoscore_py.protocol.messages import Envelope, Message, NodeConfig, UnitConfig

EXIT_INVALID = 2
"""Exit status when any file is invalid or unreadable (the same as a usage error)."""

protocol = click.Group(
    "protocol", help="Inspect AosCloud protocol v7 messages (frames, bare data, fragments)."
)


def _read_limited(handle: BinaryIO, limit: int) -> bytes:
    """Read a whole file, or refuse one over `limit` bytes without reading it all.

    Raises:
        ProtocolError: at "$", the file is over the limit.
    """
    data = handle.read(limit + 1)
    if len(data) <= limit:
        return data
    size: int | None = None
    info = os.fstat(handle.fileno())
    if stat.S_ISREG(info.st_mode):
        size = info.st_size
    raise ProtocolError("$", too_large(size, limit))


def _kind(parsed: Envelope | Message | UnitConfig | NodeConfig) -> str:
    """The type name printed after `ok`: the data's messageType for a frame."""
    if isinstance(parsed, Envelope):
        return parsed.data.MESSAGE_TYPE
    if isinstance(parsed, UnitConfig):
        return "unitConfig"
    if isinstance(parsed, NodeConfig):
        return "nodeConfig"
    return parsed.MESSAGE_TYPE


def _check_one(name: str, message_type: str | None, strict_digests: bool) -> bool:
    """Check one file and print its line; whether it is valid."""
    limit = codec.MAX_MESSAGE_BYTES
    try:
        with open(name, "rb") as handle:
            data = _read_limited(handle, limit)
    except OSError as exc:
        click.echo(f"{name}: cannot read: {exc.strerror or exc}", err=True)
        return False
    except ProtocolError as exc:
        click.echo(f"{name}: {exc.path}: {exc.reason}", err=True)
        return False
    try:
        parsed = codec.parse_any(data, message_type=message_type, strict_digests=strict_digests)
    except ProtocolError as exc:
        click.echo(f"{name}: {exc.path}: {exc.reason}", err=True)
        return False
    click.echo(f"ok {_kind(parsed)}")
    return True


@protocol.command("check")
@click.option(
    "--type",
    "message_type",
    type=click.Choice(codec.MESSAGE_TYPES + codec.FRAGMENT_TYPES),
    default=None,
    help="Type of a bare body without messageType (e.g. a stored desiredStatus, a unitConfig).",
)
@click.option(
    "--lenient-digests",
    is_flag=True,
    help="Accept AosCore's placeholder digests (such as 'sha256:abcdef'), "
    "for checking AosCore test data.",
)
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.pass_context
def check(
    ctx: click.Context, message_type: str | None, lenient_digests: bool, files: tuple[str, ...]
) -> None:
    """Check that each FILE holds a valid frame, bare message or (with --type) fragment.

    Prints `ok <type>` per valid file and `FILE: <json path>: <reason>` on stderr per invalid
    one; checks every file, then exits 0 if all are valid and 2 otherwise. A frame must be of
    version 7; digests must be sha256, sha384 or sha512 in lowercase hex of the right length.
    """
    results = [_check_one(name, message_type, not lenient_digests) for name in files]
    ctx.exit(0 if all(results) else EXIT_INVALID)
