"""This node's node config: AosCore's version rules, which configs are refused and why, and the
file written durably (what a restarted SM reports)."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import orjson
import pytest

from aoscore_py.errors import AosCode
from aoscore_py.protocol import UnitConfigState, UnitConfigStatus
from aoscore_py.sm import nodeconfig
from aoscore_py.sm.nodeconfig import FILE_NAME, NodeConfigStore, compare_versions

NODE = "node-1"
ABSENT, INSTALLED, FAILED = (
    UnitConfigState.ABSENT,
    UnitConfigState.INSTALLED,
    UnitConfigState.FAILED,
)


def config_json(node: str = NODE, **extra: Any) -> str:
    """A node config as AosCore's CM writes it (`cloudprotocol::ToJSON`)."""
    body: dict[str, Any] = {
        "version": "0.0.1",  # the request's version replaces it
        "node": {"codename": node},
        "nodeGroupSubject": {"codename": "mainType"},
        "resourceRatios": {"cpu": 50, "ram": 51},
        "labels": ["mainNode"],
        "priority": 1,
    }
    return orjson.dumps({**body, **extra}).decode()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "sm" / FILE_NAME


class TestVersions:
    @pytest.mark.parametrize(
        ("older", "newer"),
        [
            ("1.0.0", "1.0.1"),
            ("1.9.0", "1.10.0"),
            ("1.0.0-alpha", "1.0.0"),
            ("1.0.0-alpha", "1.0.0-alpha.1"),
            ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
            ("1.0.0-2", "1.0.0-11"),
            ("1.0", "1.0.0"),  # AosCore: fewer numbers come first on a tie
            ("2", "10"),
        ],
    )
    def test_order(self, older: str, newer: str) -> None:
        assert compare_versions(older, newer) == -1
        assert compare_versions(newer, older) == 1
        assert compare_versions(newer, newer) == 0

    def test_build_metadata_never_counts(self) -> None:
        assert compare_versions("1.0.0+a", "1.0.0+b") == 0

    @pytest.mark.parametrize("bad", ["", "v1.0.0", "1.0.0.0", "01.0.0", "1..0", "1.0.0-", "x"])
    def test_not_versions(self, bad: str) -> None:
        with pytest.raises(ValueError, match="not a semantic version"):
            compare_versions(bad, "1.0.0")


class TestCheck:
    def test_a_valid_config_is_accepted_and_nothing_changes(self, path: Path) -> None:
        store = NodeConfigStore(NODE, path)
        assert store.status() == UnitConfigStatus("", ABSENT)
        assert store.check(config_json(), "1.0.0") == UnitConfigStatus("1.0.0", ABSENT)
        assert store.status() == UnitConfigStatus("", ABSENT) and not path.exists()

    @pytest.mark.parametrize(
        ("body", "version", "code", "says"),
        [
            (config_json("node-2"), "1.0.0", AosCode.INVALID_ARGUMENT, "'node-2' is not this node"),
            ("{not json", "1.0.0", AosCode.INVALID_ARGUMENT, "node_config: $"),
            (config_json(priority="high"), "1.0.0", AosCode.INVALID_ARGUMENT, "$.priority"),
            ('{"labels": []}', "1.0.0", AosCode.INVALID_ARGUMENT, "$.node"),
            (config_json(labels=list("abcde")), "1.0.0", AosCode.NO_MEMORY, "$.labels"),
            (config_json(), "one", AosCode.INVALID_ARGUMENT, "version: 'one'"),
        ],
    )
    def test_what_is_refused_and_why(
        self, path: Path, body: str, version: str, code: AosCode, says: str
    ) -> None:
        answer = NodeConfigStore(NODE, path).check(body, version)
        assert (answer.version, answer.state) == (version, ABSENT)
        assert answer.error_info is not None and answer.error_info.aos_code == code
        assert says in answer.error_info.message

    def test_over_an_installed_config_versions_only_go_up(self, path: Path) -> None:
        store = NodeConfigStore(NODE, path)
        store.set(config_json(), "2.0.0")
        older = store.check(config_json(), "1.9.9")
        assert older.state == INSTALLED and older.error_info is not None
        assert older.error_info.aos_code == AosCode.WRONG_STATE
        same = store.check(config_json(priority=7), "2.0.0")
        assert same.error_info is not None and same.error_info.aos_code == AosCode.ALREADY_EXIST
        assert store.check(config_json(), "2.0.0").error_info is None  # what holds: no news
        assert store.check(config_json(priority=7), "2.0.1").error_info is None


class TestSet:
    def test_set_installs_durably_and_a_new_store_reports_it(self, path: Path) -> None:
        store = NodeConfigStore(NODE, path)
        assert store.set(config_json(), "1.0.0") == UnitConfigStatus("1.0.0", INSTALLED)
        assert store.status() == UnitConfigStatus("1.0.0", INSTALLED)
        stored = orjson.loads(path.read_bytes())
        assert stored["version"] == "1.0.0" and stored["node"] == {"codename": NODE}
        assert [p.name for p in path.parent.iterdir()] == [FILE_NAME]  # no temporary left
        again = NodeConfigStore(NODE, path)
        assert again.status() == UnitConfigStatus("1.0.0", INSTALLED)
        assert again.installed.config == store.installed.config

    def test_a_refused_set_changes_nothing(self, path: Path) -> None:
        store = NodeConfigStore(NODE, path)
        store.set(config_json(), "2.0.0")
        before = path.read_bytes()
        answer = store.set(config_json(), "1.0.0")
        assert answer.state == INSTALLED and answer.error_info is not None
        assert store.status() == UnitConfigStatus("2.0.0", INSTALLED)
        assert path.read_bytes() == before

    def test_the_same_set_again_is_answered_installed_without_a_write(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = NodeConfigStore(NODE, path)
        store.set(config_json(), "1.0.0")
        passed: list[str] = []
        monkeypatch.setattr(nodeconfig, "crashpoint", passed.append)
        assert store.set(config_json(), "1.0.0") == UnitConfigStatus("1.0.0", INSTALLED)
        assert passed == []

    def test_the_write_passes_its_crash_point(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        passed: list[str] = []
        monkeypatch.setattr(nodeconfig, "crashpoint", passed.append)
        NodeConfigStore(NODE, path).set(config_json(), "1.0.0")
        assert passed == ["sm.node_config.stored"]

    def test_a_full_disk_is_answered_and_the_old_config_stays(
        self, path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        store = NodeConfigStore(NODE, path)
        store.set(config_json(), "1.0.0")

        def full(_path: Path, _data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(nodeconfig, "atomic_write", full)
        answer = store.set(config_json(), "1.1.0")
        assert (answer.version, answer.state) == ("1.1.0", INSTALLED)
        assert answer.error_info is not None and answer.error_info.aos_code == AosCode.NO_MEMORY
        assert store.status() == UnitConfigStatus("1.0.0", INSTALLED)

    def test_in_memory_nothing_is_written(self, tmp_path: Path) -> None:
        store = NodeConfigStore(NODE, None)
        assert store.set(config_json(), "1.0.0") == UnitConfigStatus("1.0.0", INSTALLED)
        assert list(tmp_path.iterdir()) == []


class TestBrokenFile:
    @pytest.mark.parametrize(
        ("content", "says"),
        [
            (b"{not json", "$"),
            (config_json(version="one").encode(), "$.version"),
            (config_json("node-2").encode(), "not this node"),
        ],
    )
    def test_it_is_failed_until_a_valid_config_is_set(
        self, path: Path, content: bytes, says: str
    ) -> None:
        path.parent.mkdir(parents=True)
        path.write_bytes(content)
        store = NodeConfigStore(NODE, path)
        status = store.status()
        assert status.state == FAILED and status.error_info is not None
        assert str(path) in status.error_info.message and says in status.error_info.message
        assert store.check(config_json(), "0.1.0").error_info is None  # AosCore would refuse
        assert store.set(config_json(), "0.1.0") == UnitConfigStatus("0.1.0", INSTALLED)
        assert NodeConfigStore(NODE, path).status() == UnitConfigStatus("0.1.0", INSTALLED)
