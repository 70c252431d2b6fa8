"""DockerServiceManager on a fake engine with a fake clock: the executor, blue-green
replacement, restarts with backoff, reboots, image errors, image collection, and the state
that survives a restart of the service manager."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest

from aoscore_py.errors import AosCode, RemoteError, RuntimeEngineError
from aoscore_py.nodes import InstanceKey, InstanceSpec, InstanceStatus
from aoscore_py.protocol import InstanceState
from aoscore_py.sm.health import Backoff
from aoscore_py.sm.manager import DockerServiceManager
from aoscore_py.sm.types import (
    LABEL_GENERATION,
    LABEL_ITEM_CONFIG,
    LABEL_UNIT,
    LABEL_VERSION,
    ContainerLimits,
    Platform,
    image_owner,
    item_config_digest,
)

from .stubs import T0, Behaviour, Blobs, FakeClock, FakeEngine, make_blobs

UNIT, NODE = "unit-1", "node-1"


class Rig:
    """A service manager on a fake engine, with images made on demand."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clock = FakeClock(T0)
        self.engine = FakeEngine(self.clock)
        self.blobs: dict[str, Blobs] = {}
        self.managers: list[DockerServiceManager] = []

    def image(self, name: str, behaviour: Behaviour | None = None, **kwargs) -> Blobs:
        if name not in self.blobs:
            self.blobs[name] = make_blobs(self.root / "blobs", name=name, **kwargs)
            if behaviour is not None:
                self.engine.behaviours[self.blobs[name].config_digest] = behaviour
        return self.blobs[name]

    def blob_path(self, digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return self.root / "blobs" / algorithm / hex_digest

    def spec(self, item: str, version: str = "1.0", image: str | None = None, index: int = 0):
        blobs = self.image(image or f"{item}-{version}")
        return InstanceSpec(InstanceKey(item, "subj", index), "service", version, blobs.layout())

    def manager(self, **kwargs) -> DockerServiceManager:
        kwargs.setdefault("state_dir", self.root / "sm")
        kwargs.setdefault("supervise", False)
        kwargs.setdefault("host_boot", T0 - 7200)
        sm = DockerServiceManager(
            NODE, UNIT, self.engine, self.blob_path, clock=self.clock, **kwargs
        )
        self.managers.append(sm)
        return sm

    def names(self, item: str) -> list[str]:
        return sorted(c.name for c in self.engine.by_item(item))


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    made = Rig(tmp_path)
    yield made
    for sm in made.managers:
        await sm.aclose()


def by_key(statuses: list[InstanceStatus]) -> dict[str, InstanceStatus]:
    return {s.key.item_id: s for s in statuses}


def states(statuses: list[InstanceStatus]) -> dict[str, InstanceState]:
    return {s.key.item_id: s.state for s in statuses}


async def settle(rig: Rig, sm: DockerServiceManager, seconds: float = 1.0) -> None:
    rig.clock.advance(seconds)
    await sm.supervise_once()


class TestRun:
    async def test_instances_are_created_started_and_become_active(self, rig: Rig) -> None:
        sm = rig.manager()
        specs = [rig.spec("a"), rig.spec("b"), rig.spec("c")]
        statuses = await sm.run_instances(specs)
        assert states(statuses) == dict.fromkeys("abc", InstanceState.ACTIVATING)
        assert {s.node for s in statuses} == {NODE}
        assert [op for op, _ in rig.engine.calls].count("create") == 3
        rig.clock.advance(1.0)
        assert states(await sm.instance_statuses()) == dict.fromkeys("abc", InstanceState.ACTIVE)
        for c in rig.engine.containers.values():
            assert c.labels[LABEL_UNIT] == UNIT and c.labels[LABEL_GENERATION] == "0"
            assert c.restart_policy == "no"

    async def test_the_same_list_again_touches_nothing(self, rig: Rig) -> None:
        sm = rig.manager()
        specs = [rig.spec("a"), rig.spec("b")]
        await sm.run_instances(specs)
        mark = len(rig.engine.calls)
        await sm.run_instances(specs)
        await settle(rig, sm)
        assert rig.engine.mutations(mark) == []

    async def test_unwanted_containers_go_and_foreign_ones_stay(self, rig: Rig) -> None:
        sm = rig.manager()
        a, b = rig.spec("a"), rig.spec("b")
        await sm.run_instances([a, b])
        foreign = rig.engine.create_container(
            replace_labels(rig, "foreign", {"io.aoscore.item": "a"})
        )
        other_node = rig.engine.create_container(
            replace_labels(rig, "other", {LABEL_UNIT: UNIT, "io.aoscore.node": "node-2"})
        )
        await sm.run_instances([a])
        assert rig.names("b") == []
        assert {foreign, other_node} <= set(rig.engine.containers)

    async def test_a_legacy_restart_policy_is_switched_to_ours_in_place(self, rig: Rig) -> None:
        sm = rig.manager()
        a = rig.spec("a")
        await sm.run_instances([a])
        (c,) = rig.engine.by_item("a")
        c.restart_policy = "unless-stopped"
        mark = len(rig.engine.calls)
        await sm.run_instances([a])
        assert rig.engine.mutations(mark) == [("update", c.name)]
        assert c.restart_policy == "no"


def replace_labels(rig: Rig, name: str, labels: dict[str, str]):
    from aoscore_py.sm.types import ContainerSpec

    image = rig.image("foreign-img")
    rig.engine.add_image(image.config_digest)
    return ContainerSpec(name, image.config_digest, labels)


class TestBlueGreen:
    async def test_only_the_changed_instance_is_replaced_and_the_old_one_serves_until_then(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        specs = [rig.spec("a"), rig.spec("b"), rig.spec("c")]
        await sm.run_instances(specs)
        await settle(rig, sm)
        (old_b,) = rig.engine.by_item("b")
        mark = len(rig.engine.calls)

        changed = [specs[0], rig.spec("b", "2.0"), specs[2]]
        statuses = await sm.run_instances(changed)
        assert by_key(statuses)["b"].state == InstanceState.ACTIVATING
        assert by_key(statuses)["b"].version == "2.0"
        assert len(rig.engine.by_item("b")) == 2, "the new one starts beside the old one"
        assert old_b.status == "running"
        new_name = next(n for n in rig.names("b") if n != old_b.name)
        assert new_name.endswith("-g1")

        rig.clock.advance(0.5)
        assert not await sm.supervise_once() or len(rig.engine.by_item("b")) == 2
        await settle(rig, sm, 0.5)
        assert rig.names("b") == [new_name]
        touched = {name for _, name in rig.engine.mutations(mark) if not name.startswith("sha")}
        assert touched == {new_name, old_b.name}, "nothing else was touched"
        assert states(await sm.instance_statuses()) == dict.fromkeys("abc", InstanceState.ACTIVE)

    async def test_a_failing_new_version_is_rolled_back_and_retried_after_the_backoff(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await settle(rig, sm)
        (old,) = rig.engine.by_item("a")
        rig.image("a-2.0", Behaviour(exit_after_s=0.2, exit_code=3, log="panic: bad config\n"))
        await sm.run_instances([rig.spec("a", "2.0")])
        assert len(rig.engine.by_item("a")) == 2

        rig.clock.advance(0.3)
        assert await sm.supervise_once()
        assert [c.id for c in rig.engine.by_item("a")] == [old.id], "rolled back"
        assert old.status == "running"
        (status,) = await sm.instance_statuses()
        assert (status.version, status.state) == ("2.0", InstanceState.FAILED)
        assert status.error is not None and status.error.exit_code == 3
        assert status.error.message.startswith("CrashLoopBackOff: container keeps exiting")
        assert "panic: bad config" in status.error.message
        assert status.error.message.endswith("version 1.0 keeps serving")

        rig.clock.advance(5)
        await sm.supervise_once()
        assert len(rig.engine.by_item("a")) == 1, "waits out the backoff"
        rig.clock.advance(5)
        await sm.supervise_once()
        names = rig.names("a")
        assert len(names) == 2 and any(n.endswith("-g1") for n in names), "tried again"

    async def test_a_replacement_that_cannot_start_leaves_the_old_one(self, rig: Rig) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await settle(rig, sm)
        rig.image("a-2.0", Behaviour(start_error='exec: "/bin/nope": not found'))
        (status,) = await sm.run_instances([rig.spec("a", "2.0")])
        assert status.state == InstanceState.FAILED
        assert status.error is not None and status.error.message.startswith("StartFailure:")
        await sm.supervise_once()
        (remaining,) = rig.engine.by_item("a")
        assert remaining.labels[LABEL_VERSION] == "1.0" and remaining.status == "running"

    async def test_a_restarted_service_manager_finishes_a_replacement(self, rig: Rig) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await settle(rig, sm)
        await sm.run_instances([rig.spec("a", "2.0")])
        await sm.aclose()
        again = rig.manager()
        rig.clock.advance(1)
        assert await again.supervise_once()
        (c,) = rig.engine.by_item("a")
        assert c.labels[LABEL_VERSION] == "2.0"


class TestRestarts:
    async def test_a_crashed_instance_is_restarted_with_a_growing_backoff(self, rig: Rig) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await settle(rig, sm)
        (c,) = rig.engine.by_item("a")
        waits = []
        for _ in range(3):
            rig.engine.crash(c.id, code=2)
            await sm.supervise_once()
            (status,) = await sm.instance_statuses()
            assert status.state == InstanceState.FAILED
            assert status.error is not None and "CrashLoopBackOff" in status.error.message
            waited = 0
            while c.status != "running":
                rig.clock.advance(1)
                waited += 1
                await sm.supervise_once()
            waits.append(waited)
            rig.clock.advance(2)
        assert waits == [10, 20, 40]
        assert states(await sm.instance_statuses()) == {"a": InstanceState.ACTIVE}

    async def test_the_counter_survives_a_restart_and_resets_after_ten_healthy_minutes(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await settle(rig, sm)
        (c,) = rig.engine.by_item("a")
        rig.engine.crash(c.id)
        await sm.supervise_once()
        await sm.aclose()

        again = rig.manager()
        rig.clock.advance(10)
        await again.supervise_once()
        assert c.status == "running"
        rig.engine.crash(c.id)
        await again.supervise_once()
        record = again._state.health[InstanceKey("a", "subj", 0)]
        assert record.crashes == 2, "the counter was persisted"
        rig.clock.advance(20)
        await again.supervise_once()
        assert c.status == "running"
        rig.clock.advance(600)
        await again.supervise_once()
        assert again._state.health[InstanceKey("a", "subj", 0)].crashes == 0

    async def test_a_node_reboot_is_not_a_crash(self, rig: Rig) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        await settle(rig, sm)
        (c,) = rig.engine.by_item("a")
        rig.engine.crash(c.id, code=255)
        await sm.aclose()
        rig.clock.advance(60)  # the node comes back a minute later
        again = rig.manager(host_boot=rig.clock.now - 30)
        await again.supervise_once()
        assert c.status == "running", "started again at once"
        assert again._state.health.get(InstanceKey("a", "subj", 0)) is None or (
            again._state.health[InstanceKey("a", "subj", 0)].crashes == 0
        )

    async def test_an_instance_that_cannot_start_is_a_start_failure(self, rig: Rig) -> None:
        sm = rig.manager()
        rig.image("a-1.0", Behaviour(start_error='exec: "/bin/nope": no such file'))
        (status,) = await sm.run_instances([rig.spec("a")])
        assert status.state == InstanceState.FAILED
        assert status.error is not None
        assert status.error.message == (
            'StartFailure: container did not start: start container c0: exec: "/bin/nope": '
            "no such file; next start in 10 s"
        )
        mark = len(rig.engine.calls)
        rig.clock.advance(10)
        await sm.supervise_once()
        assert rig.engine.mutations(mark) == [("start", rig.names("a")[0])], "tried again"

    async def test_run_parameters_set_the_backoff(self, rig: Rig) -> None:
        sm = rig.manager()
        params = {"a": {"restartInterval": "2s"}}
        await sm.run_instances([rig.spec("a")], run_parameters=params)
        await settle(rig, sm)
        (c,) = rig.engine.by_item("a")
        rig.engine.crash(c.id)
        await sm.supervise_once()
        rig.clock.advance(2)
        await sm.supervise_once()
        assert c.status == "running"

    async def test_bad_run_parameters_are_refused(self, rig: Rig) -> None:
        sm = rig.manager()
        with pytest.raises(RemoteError, match="restartinterval"):
            await sm.run_instances([rig.spec("a")], run_parameters={"a": {"restartInterval": "x"}})


def item_config(quotas: dict | None = None, run: dict | None = None) -> bytes:
    body: dict = {"author": "test", "quotas": quotas or {}}
    if run is not None:
        body["runParameters"] = run
    return orjson.dumps(body)


class TestItemConfig:
    """The item config the manifest names: its quotas on the container, its runParameters on
    the restart backoff, another config replacing the container blue-green."""

    def limited(self, rig: Rig, config: bytes, image: str = "limited") -> InstanceSpec:
        """Instance a/subj/0 of an image whose manifest names `config`: the same `image` name
        gives the same image config and layers whatever the item config."""
        blobs = make_blobs(rig.root / "blobs", name=image, item_config=config)
        return InstanceSpec(InstanceKey("a", "subj", 0), "service", "1.0", blobs.layout())

    async def test_quotas_become_the_containers_limits(self, rig: Rig) -> None:
        sm = rig.manager(max_dmips=8_000, cpus=4)
        config = item_config({"ramLimit": 64 << 20, "pidsLimit": 20, "cpuDmipsLimit": 2_000})
        want = self.limited(rig, config)
        (status,) = await sm.run_instances([want])
        assert status.state == InstanceState.ACTIVATING
        (c,) = rig.engine.by_item("a")
        assert rig.engine.limits[c.id] == ContainerLimits(64 << 20, 20, 1_000_000_000)
        assert c.labels[LABEL_ITEM_CONFIG] == item_config_digest(want.image.manifest)

    async def test_without_max_dmips_a_core_counts_the_default(self, rig: Rig) -> None:
        sm = rig.manager(cpus=16)
        await sm.run_instances([self.limited(rig, item_config({"cpuDmipsLimit": 5_000}))])
        (c,) = rig.engine.by_item("a")
        assert rig.engine.limits[c.id] == ContainerLimits(nano_cpus=500_000_000)

    async def test_an_image_without_an_item_config_has_no_limits(self, rig: Rig) -> None:
        sm = rig.manager()
        await sm.run_instances([rig.spec("a")])
        (c,) = rig.engine.by_item("a")
        assert rig.engine.limits[c.id] == ContainerLimits()
        assert LABEL_ITEM_CONFIG not in c.labels

    async def test_new_quotas_replace_the_container_blue_green(self, rig: Rig) -> None:
        sm = rig.manager()
        first = self.limited(rig, item_config({"ramLimit": 64 << 20}))
        await sm.run_instances([first])
        await settle(rig, sm)
        (old,) = rig.engine.by_item("a")
        second = self.limited(rig, item_config({"ramLimit": 128 << 20}))
        assert (second.version, second.image.config_digest) == ("1.0", first.image.config_digest)
        await sm.run_instances([second])
        assert len(rig.engine.by_item("a")) == 2, "the new one starts beside the old one"
        assert old.status == "running"
        await settle(rig, sm)
        (new,) = rig.engine.by_item("a")
        assert new.id != old.id and rig.engine.limits[new.id].memory == 128 << 20

    async def test_run_parameters_set_the_items_backoff(self, rig: Rig) -> None:
        sm = rig.manager()
        config = item_config(run={"restartInterval": "PT2S", "startBurst": 3})
        await sm.run_instances([self.limited(rig, config)])
        assert sm._state.backoffs["a"] == Backoff(base_s=2, burst=3)
        await settle(rig, sm)
        (c,) = rig.engine.by_item("a")
        rig.engine.crash(c.id)
        await sm.supervise_once()
        rig.clock.advance(2)
        await sm.supervise_once()
        assert c.status == "running", "started again after 2 s, not 10"

    async def test_explicit_run_parameters_win(self, rig: Rig) -> None:
        sm = rig.manager()
        config = item_config(run={"restartInterval": "PT2S"})
        await sm.run_instances([self.limited(rig, config)], run_parameters={"a": Backoff(base_s=7)})
        assert sm._state.backoffs["a"] == Backoff(base_s=7)

    async def test_a_config_that_does_not_read_fails_the_start_naming_the_path(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        want = self.limited(rig, item_config({"ramLimit": -1}))
        (status,) = await sm.run_instances([want])
        assert status.state == InstanceState.FAILED and status.error is not None
        assert "$.quotas.ramLimit" in status.error.message
        assert status.error.message.startswith("StartFailure")
        assert rig.engine.by_item("a") == []


class TestImages:
    async def test_an_image_for_another_platform_fails_its_instance_with_not_supported(
        self, rig: Rig
    ) -> None:
        sm = rig.manager()
        rig.image("arm", architecture="arm64")
        specs = [rig.spec("a", image="arm"), rig.spec("b")]
        statuses = by_key(await sm.run_instances(specs))
        assert statuses["a"].state == InstanceState.FAILED
        error = statuses["a"].error
        assert error is not None and error.aos_code == AosCode.NOT_SUPPORTED
        assert error.message.startswith("ErrImagePull: the image is built for linux/arm64")
        assert statuses["b"].state == InstanceState.ACTIVATING
        assert rig.names("a") == [] and len(rig.engine.loads) == 1
        rig.clock.advance(3600)
        await sm.supervise_once()
        assert rig.names("a") == [] and len(rig.engine.loads) == 1, "never tried again"

    async def test_zstd_layers_are_loaded(self, rig: Rig) -> None:
        sm = rig.manager()
        rig.image("z", compressions=("zstd", "gzip"))
        (status,) = await sm.run_instances([rig.spec("a", image="z")])
        assert status.state == InstanceState.ACTIVATING
        (archive,) = rig.engine.loads
        assert sorted(n.rsplit(".", 2)[-1] for n in archive if ".tar" in n) == ["gz", "tar"]

    async def test_a_transient_load_failure_is_retried_after_the_backoff(self, rig: Rig) -> None:
        sm = rig.manager()
        rig.engine.fail["load"] = RuntimeEngineError("load image archive: engine busy")
        (status,) = await sm.run_instances([rig.spec("a")])
        assert status.error is not None
        assert status.error.message == (
            "ErrImagePull: load image archive: engine busy; next start in 10 s"
        )
        del rig.engine.fail["load"]
        rig.clock.advance(10)
        await sm.supervise_once()
        assert len(rig.engine.by_item("a")) == 1
        rig.clock.advance(1)
        assert states(await sm.instance_statuses()) == {"a": InstanceState.ACTIVE}

    async def test_collect_removes_only_our_unneeded_images(self, rig: Rig) -> None:
        sm = rig.manager()
        a1, a2 = rig.spec("a"), rig.spec("a", "2.0")
        b = rig.spec("b")
        await sm.run_instances([a1, b])
        await sm.run_instances([a2, b])
        await settle(rig, sm)
        rig.engine.add_image("sha256:foreign", "busybox:latest")
        ours = image_owner(UNIT, NODE)
        rig.engine.add_image("sha256:shared", f"aoscore/{ours}/x:1", "aoscore/other-sm/x:1")
        rig.engine.add_image("sha256:used", f"aoscore/{ours}/used:1")
        rig.engine.used_by_others.add("sha256:used")
        removed = await sm.collect_images(keep={b.image.config_digest})
        assert removed == [a1.image.config_digest]
        assert set(rig.engine.images) == {
            a2.image.config_digest,  # wanted here
            b.image.config_digest,
            "sha256:foreign",
            "sha256:shared",
            "sha256:used",
        }
        assert rig.engine.images["sha256:shared"][1] == ["aoscore/other-sm/x:1"]

    async def test_an_image_another_sm_loaded_gets_our_tag_too(self, rig: Rig) -> None:
        """Two SMs on one engine: each tags the image it uses, so one collecting its tags never
        deletes the image the other still needs."""
        spec = rig.spec("a")
        rig.engine.add_image(spec.image.config_digest, "aoscore/other-sm/a:1.0")
        sm = rig.manager()
        await sm.run_instances([spec])
        tags = rig.engine.images[spec.image.config_digest][1]
        assert tags == ["aoscore/other-sm/a:1.0", f"aoscore/{image_owner(UNIT, NODE)}/a:1.0"]


class TestSupervisor:
    async def test_the_background_task_restarts_and_stops_cleanly(self, rig: Rig) -> None:
        sm = rig.manager(supervise=True, poll_s=0.01)
        await sm.run_instances([rig.spec("a")])
        (c,) = rig.engine.by_item("a")
        rig.clock.advance(5)
        rig.engine.crash(c.id)
        await wait_until(lambda: "a" in {k.item_id for k in sm._state.health})
        rig.clock.advance(10)
        await wait_until(lambda: c.status == "running")
        await sm.aclose()
        assert sm._supervisor is not None and sm._supervisor.done()

    async def test_an_engine_failure_does_not_stop_it(self, rig: Rig) -> None:
        sm = rig.manager(supervise=True, poll_s=0.01)
        await sm.run_instances([rig.spec("a")])
        rig.engine.fail["list"] = RuntimeEngineError("list containers: engine away")
        await asyncio.sleep(0.05)
        assert sm._supervisor is not None and not sm._supervisor.done()
        del rig.engine.fail["list"]
        (c,) = rig.engine.by_item("a")
        rig.engine.crash(c.id)
        rig.clock.advance(60)
        await wait_until(lambda: c.status == "running", timeout_s=5)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_platform_type_prints_like_oci() -> None:
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    assert Backoff().delay(1) == 10
