"""DockerServiceManager against the real engine: only what changed is touched, blue-green
replacement and rollback, restarts with backoff owned by the service manager, start failures,
images for another CPU, healthchecks, a restart of the service manager, image collection.

Docker's own event stream is the witness of what was created, started and removed.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aoscore_py.cloud.oci import OciImage, build_test_image
from aoscore_py.errors import AosCode
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus
from aoscore_py.protocol import InstanceState
from aoscore_py.sm.docker_runtime import LABEL_UNIT, LABEL_VERSION, DockerRuntime
from aoscore_py.sm.health import Backoff
from aoscore_py.sm.manager import DockerServiceManager
from aoscore_py.sm.types import LABEL_GENERATION, LABEL_ITEM_CONFIG, ImageInfo

from .test_docker_runtime import other_architecture, rebuild, store_blobs

pytestmark = pytest.mark.integration

NODE = "node-1"


@dataclass
class Event:
    action: str
    name: str
    id: str
    at: float


class Rig:
    """Images on disk, a service manager per test, and Docker's events for the unit."""

    def __init__(self, unit: str, root: Path, runtime: DockerRuntime) -> None:
        self.unit = unit
        self.root = root
        self.runtime = runtime
        self.started = time.time()
        self.managers: list[DockerServiceManager] = []
        self.images: dict[str, OciImage] = {}

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.root / "blobs" / algorithm / hex_digest

    def image(self, name: str, **kwargs: Any) -> OciImage:
        if name not in self.images:
            zstd = kwargs.pop("zstd", False)
            architecture = kwargs.pop("architecture", None)
            # A label per run: a config, hence an image, nobody else loads.
            labels = {"run": self.unit, "name": name}
            image = build_test_image(f"aoscore-sm-{name}", labels=labels, **kwargs)
            if zstd or architecture:
                image = rebuild(image, zstd=zstd, architecture=architecture)
            store_blobs(image, self.root / "blobs")
            self.images[name] = image
        return self.images[name]

    def limited(self, item: str, item_config: dict[str, Any]) -> InstanceSpec:
        """Instance `item` 1.0 of an image whose manifest names `item_config`: the same image
        config and layers whatever the item config, so only the quotas differ."""
        labels = {"run": self.unit, "name": item}
        oci = build_test_image(f"aoscore-sm-{item}", labels=labels, item_config=item_config)
        store_blobs(oci, self.root / "blobs")
        self.images[f"{item}@{oci.manifest_digest}"] = oci
        return self._spec(item, "1.0", oci)

    def spec(self, item: str, version: str = "1.0", image: str | None = None) -> InstanceSpec:
        return self._spec(item, version, self.image(image or f"{item}-{version}"))

    def _spec(self, item: str, version: str, oci: OciImage) -> InstanceSpec:
        layout = ImageLayout(
            oci.index_digest,
            oci.manifest_digest,
            oci.manifest,
            oci.config_digest,
            tuple(oci.layer_digests),
        )
        return InstanceSpec(InstanceKey(item, "subj", 0), "service", version, layout)

    def manager(self, runtime: DockerRuntime | None = None, **kwargs: Any) -> DockerServiceManager:
        kwargs.setdefault("state_dir", self.root / "sm")
        kwargs.setdefault("poll_s", 0.1)
        sm = DockerServiceManager(
            NODE, self.unit, runtime or DockerRuntime(), self.blob_path, **kwargs
        )
        self.managers.append(sm)
        return sm

    def events(self) -> list[Event]:
        found = self.runtime.client.events(
            since=self.started - 1,
            until=time.time() + 0.5,
            filters={"type": "container", "label": [f"{LABEL_UNIT}={self.unit}"]},
            decode=True,
        )
        return [
            Event(
                e["Action"],
                e["Actor"]["Attributes"].get("name", ""),
                e["id"],
                e["timeNano"] / 1e9,
            )
            for e in found
        ]

    def containers(self, item: str) -> list[Any]:
        return [
            c
            for c in self.runtime.list_containers({LABEL_UNIT: self.unit})
            if c.labels.get("io.aoscore.item") == item
        ]


@pytest.fixture
async def rig(unit: str, tmp_path: Path, docker_runtime: DockerRuntime) -> AsyncIterator[Rig]:
    made = Rig(unit, tmp_path, docker_runtime)
    yield made
    for sm in made.managers:
        await sm.aclose()


async def wait_statuses(
    sm: DockerServiceManager,
    done: Callable[[dict[str, InstanceStatus]], bool],
    timeout_s: float = 30,
) -> dict[str, InstanceStatus]:
    deadline = time.monotonic() + timeout_s
    seen: dict[str, InstanceStatus] = {}
    while time.monotonic() < deadline:
        seen = {s.key.item_id: s for s in await sm.instance_statuses()}
        if done(seen):
            return seen
        await asyncio.sleep(0.1)
    pytest.fail(f"statuses not reached within {timeout_s} s: {seen}")


def all_active(items: str) -> Callable[[dict[str, InstanceStatus]], bool]:
    return lambda seen: (
        set(seen) == set(items) and all(s.state == InstanceState.ACTIVE for s in seen.values())
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.1)


class TestOnlyWhatChanged:
    async def test_one_version_changes_and_only_its_container_is_replaced_blue_green(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        a, b, c = rig.spec("a"), rig.spec("b"), rig.spec("c")
        await sm.run_instances([a, b, c])
        await wait_statuses(sm, all_active("abc"))
        before = {item: rig.containers(item)[0] for item in "abc"}
        changed_at = time.time()

        b2 = rig.spec("b", "2.0")
        await sm.run_instances([a, b2, c])
        seen = await wait_statuses(sm, all_active("abc"))
        assert seen["b"].version == "2.0"
        await wait_until(lambda: len(rig.containers("b")) == 1)

        (new_b,) = rig.containers("b")
        assert new_b.labels[LABEL_VERSION] == "2.0" and new_b.labels[LABEL_GENERATION] == "1"
        assert new_b.name.endswith("-g1") and new_b.name != before["b"].name
        for item in "ac":
            assert rig.containers(item)[0].id == before[item].id
        after = [e for e in rig.events() if e.at >= changed_at]
        touched = {e.id for e in after}
        assert touched == {before["b"].id, new_b.id}, "only b's containers were touched"
        assert [e.action for e in after if e.id == new_b.id][:2] == ["create", "start"]
        started = next(e.at for e in after if e.id == new_b.id and e.action == "start")
        stopped = min(e.at for e in after if e.id == before["b"].id)
        assert started < stopped, "the old one stopped only once the new one ran"
        assert {e.action for e in after if e.id == before["b"].id} >= {"kill", "destroy"}

    async def test_a_failing_new_version_is_rolled_back_and_the_old_one_serves_on(
        self, rig: Rig
    ) -> None:
        sm = rig.manager(backoff=Backoff(base_s=60))
        await sm.run_instances([rig.spec("a")])
        await wait_statuses(sm, all_active("a"))
        (old,) = rig.containers("a")
        rig.image("a-2.0", command=["/bin/sh", "-c", "echo 'v2: bad config' >&2; exit 3"])
        await sm.run_instances([rig.spec("a", "2.0")])
        seen = await wait_statuses(sm, lambda s: s["a"].state == InstanceState.FAILED)
        error = seen["a"].error
        assert error is not None and error.exit_code == 3
        assert error.message.startswith("CrashLoopBackOff: container keeps exiting (exit code 3")
        assert "v2: bad config" in error.message
        assert error.message.endswith("version 1.0 keeps serving")
        await wait_until(lambda: len(rig.containers("a")) == 1)
        (still,) = rig.containers("a")
        assert (still.id, still.status) == (old.id, "running")
        assert [e.action for e in rig.events() if e.id == old.id] == ["create", "start"]


class TestRestarts:
    async def test_the_service_manager_restarts_a_crash_loop_with_a_growing_backoff(
        self, rig: Rig
    ) -> None:
        command = ["/bin/sh", "-c", "echo up; sleep 0.2; echo 'lost the bus' >&2; exit 4"]
        rig.image("a-1.0", command=command)
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")], run_parameters={"a": {"restartInterval": "0.5s"}})
        await wait_until(lambda: sum(e.action == "start" for e in rig.events()) >= 4, timeout_s=30)
        starts = [e.at for e in rig.events() if e.action == "start"]
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        # each gap: the 0.2 s run, then 0.5 s, 1 s, 2 s of backoff
        for gap, wait in zip(gaps, [0.5, 1.0, 2.0], strict=False):
            assert wait + 0.2 <= gap < wait + 1.5, gaps
        (c,) = rig.containers("a")
        assert c.restart_count == 0, "Docker restarted nothing itself"
        seen = await wait_statuses(sm, lambda s: s["a"].state == InstanceState.FAILED)
        error = seen["a"].error
        assert error is not None and error.exit_code == 4
        assert error.message.startswith("CrashLoopBackOff: container keeps exiting (exit code 4")
        assert "lost the bus" in error.message and "next start in" in error.message

    async def test_a_program_that_cannot_start_is_a_start_failure(self, rig: Rig) -> None:
        rig.image("a-1.0", command=["/bin/no-such-program"])
        sm = rig.manager()
        (status,) = await sm.run_instances([rig.spec("a")])
        assert status.state == InstanceState.FAILED
        assert status.error is not None
        assert status.error.message.startswith("StartFailure: container did not start")
        assert "no-such-program" in status.error.message
        (c,) = rig.containers("a")
        assert c.status == "created"

    async def test_a_crash_while_the_service_manager_was_away_is_not_counted(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await wait_statuses(sm, all_active("a"))
        await sm.aclose()
        (c,) = rig.containers("a")
        rig.runtime.client.api.kill(c.id)  # the node went down under it
        await wait_until(lambda: rig.containers("a")[0].status == "exited")

        again = rig.manager()
        await wait_statuses(again, all_active("a"))
        (back,) = rig.containers("a")
        assert back.id == c.id
        record = again._state.health.get(InstanceKey("a", "subj", 0))
        assert record is None or record.crashes == 0

    async def test_a_container_left_with_dockers_restart_policy_is_switched_in_place(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        a = rig.spec("a")
        await sm.run_instances([a])
        (c,) = rig.containers("a")
        rig.runtime.set_restart_policy(c.id, "unless-stopped")
        await sm.run_instances([a])
        (same,) = rig.containers("a")
        assert (same.id, same.restart_policy, same.status) == (c.id, "no", "running")


class TestImages:
    async def test_an_image_for_another_cpu_fails_with_not_supported_before_loading(
        self, rig: Rig
    ) -> None:
        rig.image("arm", architecture=other_architecture())
        sm = rig.manager()
        (status,) = await sm.run_instances([rig.spec("a", image="arm")])
        assert status.state == InstanceState.FAILED
        assert status.error is not None and status.error.aos_code == AosCode.NOT_SUPPORTED
        assert status.error.message.startswith("ErrImagePull: the image is built for linux/")
        assert "exec format error" not in status.error.message
        assert rig.containers("a") == []
        assert rig.runtime.image_platform(rig.images["arm"].config_digest) is None

    async def test_a_zstd_image_runs(self, rig: Rig) -> None:
        rig.image("a-1.0", zstd=True)
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await wait_statuses(sm, all_active("a"))

    async def test_collect_removes_only_the_images_we_loaded_that_nothing_needs(
        self, rig: Rig
    ) -> None:
        mine = f"aoscore/{rig.unit}"

        class OnlyThisTest(DockerRuntime):
            """Sees only this test's images: others may be running tests on this engine."""

            def list_images(self) -> list[ImageInfo]:
                return [i for i in super().list_images() if any(t.startswith(mine) for t in i.tags)]

        sm = rig.manager(runtime=OnlyThisTest())
        a1, a2, b = (
            rig.spec(f"{rig.unit}-a"),
            rig.spec(f"{rig.unit}-a", "2.0"),
            rig.spec(f"{rig.unit}-b"),
        )
        await sm.run_instances([a1, b])
        await sm.run_instances([a2, b])
        await wait_until(lambda: len(rig.runtime.list_containers({LABEL_UNIT: rig.unit})) == 2)
        removed = await sm.collect_images(keep={a2.image.config_digest})
        assert removed == [a1.image.config_digest]
        assert rig.runtime.image_platform(a1.image.config_digest) is None
        for kept in (a2, b):  # wanted, or in use by a container
            assert rig.runtime.image_platform(kept.image.config_digest) is not None


class TestItemConfig:
    async def test_quotas_are_the_containers_limits_and_new_ones_replace_it(self, rig: Rig) -> None:
        cpus = int(rig.runtime.client.info()["NCPU"])
        sm = rig.manager(max_dmips=1_000 * cpus, cpus=cpus)
        quotas = {"ramLimit": 96 << 20, "pidsLimit": 32, "cpuDmipsLimit": 500}
        first = rig.limited("q", {"quotas": quotas, "runParameters": {"restartInterval": "PT3S"}})
        await sm.run_instances([first])
        await wait_statuses(sm, all_active("q"))
        (box,) = rig.containers("q")
        host = rig.runtime.client.api.inspect_container(box.id)["HostConfig"]
        assert host["Memory"] == 96 << 20
        assert host["PidsLimit"] == 32
        assert host["NanoCpus"] == 500_000_000  # 500 of 1000 DMIPS per CPU: half a CPU
        assert box.labels[LABEL_ITEM_CONFIG] == first.image.manifest["aosItemConfig"]["digest"]
        assert sm._state.backoffs["q"].base_s == 3

        second = rig.limited("q", {"quotas": {**quotas, "ramLimit": 128 << 20}})
        assert second.image.config_digest == first.image.config_digest
        await sm.run_instances([second])
        await wait_until(lambda: [c.id != box.id for c in rig.containers("q")] == [True])
        await wait_statuses(sm, all_active("q"))
        (new,) = rig.containers("q")
        assert new.labels[LABEL_GENERATION] == "1", "replaced blue-green, as a new version is"
        host = rig.runtime.client.api.inspect_container(new.id)["HostConfig"]
        assert (host["Memory"], host["PidsLimit"]) == (128 << 20, 32)
        assert "q" not in sm._state.backoffs  # that config names no runParameters


class TestHealth:
    async def test_a_healthy_healthcheck_is_active_before_the_window(self, rig: Rig) -> None:
        rig.image("a-1.0", healthcheck=["/bin/true"], health_interval_s=0.2)
        sm = rig.manager(settle_s=60)
        await sm.run_instances([rig.spec("a")])
        await wait_statuses(sm, all_active("a"), timeout_s=20)

    async def test_a_failing_healthcheck_is_failed(self, rig: Rig) -> None:
        rig.image("a-1.0", healthcheck=["/bin/false"], health_interval_s=0.2)
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        seen = await wait_statuses(sm, lambda s: s["a"].state == InstanceState.FAILED)
        assert seen["a"].error is not None and "health check" in seen["a"].error.message


@pytest.fixture(autouse=True)
def _no_stray_images(rig: Rig) -> Iterator[None]:
    """Remove the images this test loaded, so the engine does not fill up run after run."""
    yield
    for image in rig.images.values():
        for info in rig.runtime.list_images():
            if info.id == image.config_digest:
                for tag in info.tags or (info.id,):
                    rig.runtime.remove_image(tag)
