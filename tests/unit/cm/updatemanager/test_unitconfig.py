"""The unit config rule: a new config must have a strictly greater semver, name only known
nodes, and a refused one is reported failed while the installed one stays in force. The version
rule on its own, then through the handler over a real store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from aoscore_py.cm.updatemanager.unitconfig import semver_key, version_refusal
from aoscore_py.errors import AosCode
from aoscore_py.protocol import ErrorInfo, Identity, NodeConfig, UnitConfig, UnitConfigState

from .rig import Rig, desired
from .stubs import settle


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "1.0.1"),
        ("1.9.0", "1.10.0"),
        ("1.0.0-alpha", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-rc.1", "1.0.0"),
        ("0.9.9", "1.0.0"),
    ],
)
def test_semver_precedence(lower: str, higher: str) -> None:
    low, high = semver_key(lower), semver_key(higher)
    assert low is not None and high is not None and low < high


def test_build_metadata_does_not_count() -> None:
    assert semver_key("1.0.0+build.5") == semver_key("1.0.0")


@pytest.mark.parametrize("bad", ["1", "1.0", "01.0.0", "1.0.0-", "v1.0.0", "1.0.0-01", ""])
def test_a_version_that_is_not_semver_is_refused(bad: str) -> None:
    assert semver_key(bad) is None
    error = version_refusal("1.0.0", bad)
    assert error is not None and error.aos_code == AosCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("installed", "new", "code"),
    [
        (None, "0.0.1", None),
        ("1.0.0", "1.0.1", None),
        ("1.0.0", "1.0.0", AosCode.ALREADY_EXIST),
        ("1.0.0", "1.0.0+other", AosCode.ALREADY_EXIST),
        ("1.2.0", "1.1.9", AosCode.WRONG_STATE),
        ("1.0.0", "1.0.0-rc.1", AosCode.WRONG_STATE),
    ],
)
def test_version_refusal(installed: str | None, new: str, code: AosCode | None) -> None:
    error = version_refusal(installed, new)
    assert (error.aos_code if error else None) == (int(code) if code else None)


def with_config(version: str, *nodes: str, labels: tuple[str, ...] = ()):
    config = UnitConfig(
        version, "1", tuple(NodeConfig(Identity(codename=n), labels=labels) for n in nodes)
    )
    return replace(desired(), unit_config=config)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "data")
    yield rig
    await rig.close()


async def apply(rig: Rig, ds) -> None:
    handler = rig.handler or rig.build()
    if not rig.machine.journal():
        await handler.start()
    await handler.accept(ds, time.monotonic())
    await settle(handler)


def states(rig: Rig) -> list[tuple[str, UnitConfigState, int | None]]:
    assert rig.storage is not None
    return [
        (c.version, c.state, c.error.aos_code if c.error else None)
        for c in rig.storage.unit_configs()
    ]


async def test_a_greater_version_replaces_the_installed_config(rig: Rig) -> None:
    await apply(rig, with_config("1.0.0", "node-1"))
    await apply(rig, with_config("1.1.0", "node-1", labels=("gpu",)))
    assert states(rig) == [("1.1.0", UnitConfigState.INSTALLED, None)]


@pytest.mark.parametrize(
    ("version", "code"), [("1.0.0", AosCode.ALREADY_EXIST), ("0.9.0", AosCode.WRONG_STATE)]
)
async def test_an_equal_or_lower_version_fails_and_the_installed_one_stays(
    rig: Rig, version: str, code: AosCode
) -> None:
    await apply(rig, with_config("1.0.0", "node-1"))
    await apply(rig, with_config(version, "node-1", labels=("gpu",)))
    assert states(rig) == [
        ("1.0.0", UnitConfigState.INSTALLED, None),
        (version, UnitConfigState.FAILED, int(code)),
    ]
    assert rig.storage is not None
    installed = rig.storage.unit_config()
    assert installed is not None and b"gpu" not in (installed.body or b"")


async def test_the_same_config_sent_again_changes_nothing(rig: Rig) -> None:
    await apply(rig, with_config("1.0.0", "node-1"))
    await apply(rig, replace(with_config("1.0.0", "node-1"), items=()))
    assert states(rig) == [("1.0.0", UnitConfigState.INSTALLED, None)]


async def test_unknown_nodes_fail_it_with_not_found(rig: Rig) -> None:
    await apply(rig, with_config("1.0.0", "node-1", "node-9"))
    assert states(rig) == [("1.0.0", UnitConfigState.FAILED, int(AosCode.NOT_FOUND))]
    assert rig.storage is not None and rig.storage.unit_config() is None


async def test_a_later_good_config_clears_the_refused_one(rig: Rig) -> None:
    await apply(rig, with_config("1.0.0", "node-1"))
    await apply(rig, with_config("0.1.0", "node-1"))
    await apply(rig, with_config("2.0.0", "node-1"))
    assert states(rig) == [("2.0.0", UnitConfigState.INSTALLED, None)]


async def test_a_node_refusing_its_entry_fails_it_and_the_installed_one_stays(
    rig: Rig,
) -> None:
    await apply(rig, with_config("1.0.0", "node-1"))
    rig.nodes.refusal = ErrorInfo(int(AosCode.INVALID_ARGUMENT), 0, "node node-1: bad labels")
    await apply(rig, with_config("2.0.0", "node-1", labels=("gpu",)))
    assert states(rig) == [
        ("1.0.0", UnitConfigState.INSTALLED, None),
        ("2.0.0", UnitConfigState.FAILED, int(AosCode.INVALID_ARGUMENT)),
    ]
    assert rig.nodes.unit_nodes == [{"node-1"}], "only the installed one names the nodes"


async def test_the_nodes_check_a_config_only_once_its_version_and_nodes_pass(rig: Rig) -> None:
    await apply(rig, with_config("1.0.0", "node-1"))
    await apply(rig, with_config("0.5.0", "node-1", labels=("gpu",)))
    await apply(rig, with_config("2.0.0", "node-1", "node-7"))
    assert [c.version for c in rig.nodes.applied] == ["1.0.0"]
