"""Whether a unit config may replace the installed one: AosCore's version rule, as plain code.

A unit config is versioned with semantic versioning (semver.org 2.0.0). When one is installed,
a new one must be strictly greater: an equal version with another body is `alreadyExist`, a
lower one `wrongState`, a version that is not semver `invalidArgument`. Nodes it names that the
unit does not know fail it with `notFound`. A refused config is reported failed and nothing of
it is applied: the installed one stays in force.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from ...errors import AosCode
from ...protocol import ErrorInfo

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)

SemverKey = tuple[int, int, int, int, tuple[tuple[int, int, str], ...]]


def semver_key(version: str) -> SemverKey | None:
    """A key that orders versions by semver precedence; None when `version` is not semver.

    A release sorts after its pre-releases; pre-release identifiers compare numerically when
    numeric (and below alphanumeric ones), else as text; build metadata is ignored.
    """
    found = _SEMVER.match(version)
    if found is None:
        return None
    major, minor, patch, pre = found.groups()
    if pre is None:
        return int(major), int(minor), int(patch), 1, ()
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return int(major), int(minor), int(patch), 0, parts


def version_refusal(installed: str | None, new: str) -> ErrorInfo | None:
    """Why `new` may not replace `installed` (None: it may)."""
    new_key = semver_key(new)
    if new_key is None:
        return ErrorInfo(
            int(AosCode.INVALID_ARGUMENT), 0, f"unit config version {new!r} is not semver"
        )
    if installed is None:
        return None
    old_key = semver_key(installed)
    if old_key is None or new_key > old_key:
        return None
    if new_key == old_key:
        return ErrorInfo(
            int(AosCode.ALREADY_EXIST),
            0,
            f"unit config {new} is already installed with another content; "
            "a change needs a greater version",
        )
    return ErrorInfo(
        int(AosCode.WRONG_STATE),
        0,
        f"unit config {new} is lower than the installed {installed}",
    )


def nodes_refusal(named: Iterable[str], knows: Callable[[str], bool]) -> ErrorInfo | None:
    """Why a config naming `named` nodes cannot apply to the unit (`knows` its nodes)."""
    unknown = sorted({n for n in named if not knows(n)})
    if not unknown:
        return None
    return ErrorInfo(int(AosCode.NOT_FOUND), 0, f"unknown nodes in unit config: {unknown}")
