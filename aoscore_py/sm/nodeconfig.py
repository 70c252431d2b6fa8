"""This node's node config, kept durably the way AosCore's SM keeps it.

The CM installs a unit config in two rounds (docs/sm-protocol.md): `CheckNodeConfig` to every
node, then, once all accepted, `SetNodeConfig`; `GetNodeConfigStatus` asks what a node has. Each
carries AosCore's node config JSON (the unit config's entry for this node, `node.codename` this
node's id) and the unit config's version, which becomes the node config's version (AosCore's SM
overwrites the JSON's own, so do we). AosCore's handler is aos_core_lib_cpp
`src/core/sm/nodeconfig/nodeconfig.cpp`; its rules, and where we differ:

- A config is accepted when it reads as a node config (`protocol.parse_node_config`) and names
  this node; otherwise invalidArgument naming the JSON path (noMemory for too many or too long
  labels, as AosCore).
- Versions compare as AosCore's semver (`compare_versions`): over an installed config, an older
  version is wrongState and the same version alreadyExist, except that the same version with
  the same content is accepted (AosCore refuses it): a CM that sends its check or set again
  after a restart is not refused for what already holds. Unlike AosCore, a version that is no
  semver is refused even over no config, so a stored version can always be compared.
- A stored config that does not read leaves the node `failed` with that error. AosCore then
  refuses every check with it; we accept a valid config, whose set replaces the broken file.
- A check changes nothing and answers the node's current state with the version checked and
  the refusal, if any (AosCore's answer). A set answers `installed` with the new version, or
  the current state with the error.

`NodeConfigStore` holds the decisions (pure) and the file: `set` writes it whole with
`fsutil.atomic_write` (temp, fsync, rename, fsync the folder), so a power cut leaves the old
config or the new one, then passes the crash point `sm.node_config.stored`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import orjson

from statemachine import crashpoint

from ..errors import AosCode, ProtocolError
from ..fsutil import NO_SPACE, atomic_write
from ..logs import get_logger
from ..protocol import ErrorInfo, NodeConfig, UnitConfigState, UnitConfigStatus, parse_node_config
from .crashpoints import NODE_CONFIG_STORED

FILE_NAME = "node-config.json"

log = get_logger("sm.nodeconfig")

_NUMERIC = re.compile(r"0|[1-9][0-9]*")
_IDENTIFIER = re.compile(r"[0-9A-Za-z-]+")


# -- versions ------------------------------------------------------------------------------------


def _semver(version: str) -> tuple[list[str], list[str]]:
    """The base and prerelease identifiers of an AosCore semver: 1 to 3 numbers without
    leading zeros, then `-prerelease`, then `+build` (which never counts).

    Raises:
        ValueError: not such a version.
    """
    rest, _, build = version.partition("+")
    base, dash, prerelease = rest.partition("-")
    numbers = base.split(".")
    pre = prerelease.split(".") if dash else []
    ok = 1 <= len(numbers) <= 3 and all(_NUMERIC.fullmatch(n) for n in numbers)
    ok = ok and all(_IDENTIFIER.fullmatch(p) for p in pre)
    ok = ok and all(not (p.isdigit() and not _NUMERIC.fullmatch(p)) for p in pre)
    ok = ok and (not build or all(_IDENTIFIER.fullmatch(b) for b in build.split(".")))
    if not ok:
        raise ValueError(f"{version!r} is not a semantic version such as 1.2.3")
    return numbers, pre


def _order(a: object, b: object) -> int:
    return (a > b) - (a < b)  # type: ignore[operator]


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version `a` is older than, as old as, or newer than `b` (AosCore's semver:
    numbers compare as numbers, fewer numbers first on a tie, a prerelease before its release).

    Raises:
        ValueError: either is not a semantic version.
    """
    (base_a, pre_a), (base_b, pre_b) = _semver(a), _semver(b)
    for x, y in zip(base_a, base_b, strict=False):
        if int(x) != int(y):
            return _order(int(x), int(y))
    if len(base_a) != len(base_b):
        return _order(len(base_a), len(base_b))
    if bool(pre_a) != bool(pre_b):
        return 1 if not pre_a else -1
    for x, y in zip(pre_a, pre_b, strict=False):
        if x.isdigit() != y.isdigit():
            return -1 if x.isdigit() else 1
        if x != y:
            return _order(int(x), int(y)) if x.isdigit() else _order(x, y)
    return _order(len(pre_a), len(pre_b))


# -- decisions -----------------------------------------------------------------------------------


def _error(code: AosCode, message: str) -> ErrorInfo:
    return ErrorInfo(int(code), 0, message)


@dataclass(frozen=True)
class Installed:
    """What the node has: its state, the config and its version, and why it failed."""

    state: UnitConfigState
    version: str = ""
    config: NodeConfig | None = None
    error: ErrorInfo | None = None

    @property
    def status(self) -> UnitConfigStatus:
        """As `GetNodeConfigStatus` answers it: the error only when failed (AosCore's)."""
        error = self.error if self.state == UnitConfigState.FAILED else None
        return UnitConfigStatus(self.version, self.state, error)


def read_request(node_id: str, config_json: str, version: str) -> NodeConfig:
    """The node config a check or set carries, its version the request's.

    Raises:
        ProtocolError: invalidArgument: the JSON is no node config (the message names the JSON
            path), it is for another node, or the version is no semantic version.
    """
    try:
        _semver(version)
    except ValueError as exc:
        raise ProtocolError("version", str(exc)) from None
    try:
        config = parse_node_config(config_json)
    except ProtocolError as exc:
        raise ProtocolError("node_config", exc.message, code=exc.code) from None
    named = config.node.codename
    if named != node_id:
        raise ProtocolError(
            "node_config: $.node.codename", f"{named!r} is not this node {node_id!r}"
        )
    return replace(config, version=version)


def refusal(installed: Installed, config: NodeConfig, version: str) -> ErrorInfo | None:
    """Why `config` at `version` may not replace what is installed, or None."""
    if installed.state != UnitConfigState.INSTALLED or installed.config is None:
        return None  # nothing to compare with: absent, or a file that did not read
    order = compare_versions(version, installed.version)
    if order < 0:
        return _error(
            AosCode.WRONG_STATE,
            f"node config version {version} is older than the installed {installed.version}",
        )
    if order == 0 and config != installed.config:
        return _error(
            AosCode.ALREADY_EXIST,
            f"node config version {version} is installed with other content",
        )
    return None


# -- the store -----------------------------------------------------------------------------------


class NodeConfigStore:
    """This node's node config, in one JSON file (in memory only when `path` is None).

    Args:
        node_id: this node; a config for another is refused.
        path: the file (DATA_DIR/sm/node-config.json); read at once.
    """

    def __init__(self, node_id: str, path: Path | None) -> None:
        self.node_id = node_id
        self.path = path
        self.installed = Installed(UnitConfigState.ABSENT)
        if path is not None:
            self.installed = self._load(path)

    def _load(self, path: Path) -> Installed:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return Installed(UnitConfigState.ABSENT)
        except OSError as exc:
            return self._broken(path, "", f"cannot be read: {exc}")
        try:
            config = parse_node_config(raw)
        except ProtocolError as exc:
            return self._broken(path, "", exc.message)
        version = config.version or ""
        try:
            _semver(version)
        except ValueError as exc:
            return self._broken(path, version, f"$.version: {exc}")
        if config.node.codename != self.node_id:
            return self._broken(path, version, f"$.node.codename: not this node {self.node_id!r}")
        return Installed(UnitConfigState.INSTALLED, version, config)

    def _broken(self, path: Path, version: str, why: str) -> Installed:
        error = _error(AosCode.FAILED, f"node config file {path}: {why}")
        log.error(
            "node_config.unreadable",
            node=self.node_id,
            path=str(path),
            error=error.message,
            next="reported failed; a valid config the CM sets replaces it",
        )
        return Installed(UnitConfigState.FAILED, version, None, error)

    def status(self) -> UnitConfigStatus:
        """What `GetNodeConfigStatus` answers."""
        return self.installed.status

    def check(self, config_json: str, version: str) -> UnitConfigStatus:
        """What `CheckNodeConfig` answers: the current state, the version checked, and why it
        is refused (no error: it may be set). Changes nothing."""
        error = self._refusal(config_json, version)[1]
        return UnitConfigStatus(version, self.installed.state, error)

    def set(self, config_json: str, version: str) -> UnitConfigStatus:
        """Install the config unless refused: write it durably, then report it installed.
        Blocking (fsync): call it off the event loop.

        A write that fails (a full disk) leaves the old file and state, and answers the error.
        """
        config, error = self._refusal(config_json, version)
        if config is None or error is not None:
            return UnitConfigStatus(version, self.installed.state, error)
        if config != self.installed.config or self.installed.state != UnitConfigState.INSTALLED:
            try:
                self._write(config_json, version)
            except OSError as exc:
                code = AosCode.NO_MEMORY if exc.errno in NO_SPACE else AosCode.FAILED
                message = f"store node config {version}: {exc}"
                return UnitConfigStatus(version, self.installed.state, _error(code, message))
        self.installed = Installed(UnitConfigState.INSTALLED, version, config)
        return self.installed.status

    def _refusal(
        self, config_json: str, version: str
    ) -> tuple[NodeConfig | None, ErrorInfo | None]:
        try:
            config = read_request(self.node_id, config_json, version)
        except ProtocolError as exc:
            return None, ErrorInfo.from_exception(exc)
        return config, refusal(self.installed, config, version)

    def _write(self, config_json: str, version: str) -> None:
        """The JSON as the CM sent it, its `version` the request's (what AosCore stores)."""
        if self.path is None:
            return
        document = orjson.loads(config_json)
        document["version"] = version
        atomic_write(self.path, orjson.dumps(document, option=orjson.OPT_INDENT_2))
        crashpoint(NODE_CONFIG_STORED)
