"""After a store was moved aside, what still runs and what is still stored is adopted, not thrown
away: the launcher records the instances its nodes report when it has no record at all, and the
image manager adopts a stored blob file with no record once its hash matches. A real Storage."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from aoscore_py.blobs.store import BlobStore
from aoscore_py.cm.imagemanager import manager as manager_module
from aoscore_py.cm.imagemanager.interfaces import ItemRecord
from aoscore_py.cm.imagemanager.manager import ImageManager
from aoscore_py.cm.launcher.launcher import Launcher
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus
from aoscore_py.protocol import (
    DesiredInstance,
    DesiredItem,
    DesiredStatus,
    Identity,
    InstanceState,
    ItemState,
    NodeInfo,
    NodeState,
    RuntimeInfo,
)
from aoscore_py.storage import Storage

DIGEST = "sha256:" + "1" * 64


class Node:
    """A node whose containers are set by the test; `run_instances` may leave one behind, as a
    node that has not removed it yet."""

    def __init__(self, node_id: str = "n1") -> None:
        self.node_id = node_id
        self.running: dict[InstanceKey, str] = {}
        self.linger: set[InstanceKey] = set()

    async def node_info(self) -> NodeInfo:
        docker = RuntimeInfo(identity=Identity(codename="docker"), runtime_type="docker")
        return NodeInfo(
            Identity(codename=self.node_id), NodeState.PROVISIONED, True, runtimes=(docker,)
        )

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        kept = {k: v for k, v in self.running.items() if k in self.linger}
        self.running = {**kept, **{s.key: s.version for s in specs}}
        return [InstanceStatus(s.key, s.version, self.node_id, InstanceState.ACTIVE) for s in specs]

    async def instance_statuses(self) -> list[InstanceStatus]:
        return [
            InstanceStatus(k, v, self.node_id, InstanceState.ACTIVE)
            for k, v in sorted(self.running.items())
        ]


def layout(item_id: str, version: str) -> ImageLayout:
    return ImageLayout(DIGEST, DIGEST, {}, DIGEST, ())


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    store = Storage(tmp_path / "data")
    yield store
    store.close()


def key(item: str, n: int = 0) -> InstanceKey:
    return InstanceKey(item, "subj", n)


class TestLauncherAdoption:
    async def test_with_no_record_what_the_nodes_run_is_adopted_and_reported(
        self, storage: Storage
    ) -> None:
        node = Node()
        node.running = {key("svc", 0): "1.0", key("svc", 1): "1.0"}
        launcher = Launcher(storage, {"n1": node}, layout)
        records = await launcher.refresh()
        assert [(str(r.key), r.version, r.node, r.state) for r in records] == [
            ("svc/subj/0", "1.0", "n1", InstanceState.ACTIVE),
            ("svc/subj/1", "1.0", "n1", InstanceState.ACTIVE),
        ]
        assert storage.instances() == records, "recorded: the next placement keeps them there"
        assert await launcher.refresh() == records, "adopted once"

    async def test_an_adopted_instance_that_goes_away_is_reported_failed(
        self, storage: Storage
    ) -> None:
        node = Node()
        node.running = {key("svc"): "1.0"}
        launcher = Launcher(storage, {"n1": node}, layout)
        await launcher.refresh()
        node.running = {}
        (record,) = await launcher.refresh()
        assert record.state == InstanceState.FAILED

    async def test_once_placed_an_instance_the_placement_does_not_name_is_not_adopted(
        self, storage: Storage
    ) -> None:
        """Launching still removes what is not wanted, and its record does not outlive it: an
        instance the node has not removed yet is not recorded, so it is not reported failed
        once it is gone."""
        node = Node()
        node.running = {key("old"): "1.0"}
        node.linger = {key("old")}
        launcher = Launcher(storage, {"n1": node}, layout)
        desired = DesiredStatus(
            items=(DesiredItem(Identity(id="svc", type="service"), "1.0", DIGEST),),
            instances=(DesiredInstance(Identity(id="svc"), Identity(id="subj"), 0, 1),),
        )
        items = [ItemRecord("svc", "1.0", "service", DIGEST, ItemState.PENDING)]
        await launcher.launch(desired, items, {})
        assert set(node.running) == {key("old"), key("svc")}, "not removed yet"
        records = await launcher.refresh()
        assert [str(r.key) for r in records] == ["svc/subj/0"]
        node.running.pop(key("old"))
        records = await launcher.refresh()
        assert [(str(r.key), r.state) for r in records] == [("svc/subj/0", InstanceState.ACTIVE)]

    async def test_nothing_running_and_no_record_stays_empty(self, storage: Storage) -> None:
        assert await Launcher(storage, {"n1": Node()}, layout).refresh() == []


@pytest.fixture
async def images(storage: Storage, tmp_path: Path) -> AsyncIterator[ImageManager]:
    http = httpx.AsyncClient()
    yield ImageManager(storage, BlobStore(tmp_path / "data"), None, http)  # type: ignore[arg-type]
    await http.aclose()


def put(store: BlobStore, content: bytes, digest: str | None = None) -> str:
    digest = digest or "sha256:" + hashlib.sha256(content).hexdigest()
    store.path(digest).write_bytes(content)
    return digest


class TestBlobAdoption:
    async def test_a_stored_file_with_no_record_is_hashed_once_and_adopted(
        self,
        images: ImageManager,
        storage: Storage,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        store = BlobStore(tmp_path / "data")
        digest = put(store, b"layer bytes" * 1000)
        assert storage.blob(digest) is None
        assert await images._have(digest)
        record = storage.blob(digest)
        stat = store.path(digest).stat()
        assert record is not None
        assert (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns)

        def no_hashing(path: Path) -> str:
            raise AssertionError("hashed again")

        monkeypatch.setattr(manager_module, "hash_file", no_hashing)
        assert await images._have(digest), "trusted by its record from then on"

    async def test_a_stored_file_that_does_not_match_its_digest_is_removed(
        self, images: ImageManager, storage: Storage, tmp_path: Path
    ) -> None:
        store = BlobStore(tmp_path / "data")
        digest = put(store, b"other bytes", "sha256:" + "2" * 64)
        assert not await images._have(digest)
        assert not os.path.exists(store.path(digest))
        assert storage.blob(digest) is None
