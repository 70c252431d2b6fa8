"""plan and instance_state: from what the engine shows to the steps that converge it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.errors import AosCode
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec
from aoscore_py.protocol import InstanceState
from aoscore_py.sm.docker_runtime import (
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_ITEM,
    LABEL_SUBJECT,
    LABEL_VERSION,
    ContainerInfo,
)
from aoscore_py.sm.planner import Step, container_key, instance_state, plan, states_by_key

IMG1 = "sha256:" + "1" * 64
IMG2 = "sha256:" + "2" * 64


def layout(config: str = IMG1) -> ImageLayout:
    return ImageLayout("sha256:" + "9" * 64, "sha256:" + "8" * 64, {}, config, ())


def spec(item: str, index: int = 0, version: str = "1.0", image: str = IMG1) -> InstanceSpec:
    return InstanceSpec(InstanceKey(item, "subj", index), "service", version, layout(image))


def labels_for(s: InstanceSpec) -> dict[str, str]:
    return {
        LABEL_ITEM: s.key.item_id,
        LABEL_SUBJECT: s.key.subject_id,
        LABEL_INSTANCE: str(s.key.instance),
        LABEL_VERSION: s.version,
        LABEL_IMAGE: s.image.config_digest,
    }


def container(
    cid: str,
    s: InstanceSpec | None = None,
    *,
    status: str = "running",
    health: str | None = None,
    exit_code: int | None = None,
    **label_overrides: str,
) -> ContainerInfo:
    labels = labels_for(s) if s is not None else {}
    labels.update({f"io.aoscore.{k}": v for k, v in label_overrides.items()})
    return ContainerInfo(
        id=cid,
        name=f"name-{cid}",
        labels=labels,
        status=status,
        health=health,
        exit_code=exit_code,
        started_at=None,
        image_id="sha256:" + "f" * 64,
    )


def actions(steps: list[Step]) -> list[tuple[str, str | None]]:
    return [(s.action, str(s.key) if s.key else s.container_id) for s in steps]


class TestRemovals:
    def test_a_container_of_no_wanted_instance_is_removed(self) -> None:
        old = spec("gone")
        assert plan([], [container("c1", old)]) == [
            Step("remove", old.key, "c1", "not wanted"),
        ]

    def test_an_older_version_is_replaced(self) -> None:
        want = spec("svc", version="2.0")
        steps = plan([want], [container("c1", replace(want, version="1.0"))])
        assert steps[0] == Step("remove", want.key, "c1", "version 1.0")
        assert [s.action for s in steps] == ["remove", "load_image", "create", "start"]

    def test_a_container_of_another_image_is_replaced(self) -> None:
        want = spec("svc", image=IMG2)
        steps = plan([want], [container("c1", spec("svc", image=IMG1))])
        assert steps[0] == Step("remove", want.key, "c1", "other image")
        assert [s.action for s in steps[1:]] == ["load_image", "create", "start"]

    def test_a_duplicate_is_removed_and_the_running_one_kept(self) -> None:
        want = spec("svc")
        containers = [
            container("a-stopped", want, status="exited", exit_code=1),
            container("z-running", want),
        ]
        assert plan([want], containers) == [Step("remove", want.key, "a-stopped", "duplicate")]

    @pytest.mark.parametrize(
        "labels",
        [
            {},
            {"instance": "not-a-number"},
            {"instance": ""},
        ],
        ids=["no labels", "bad instance", "empty instance"],
    )
    def test_a_container_with_unreadable_labels_is_removed(self, labels: dict[str, str]) -> None:
        want = spec("svc")
        broken = container("bad", want if labels else None, **labels)
        assert container_key(broken) is None
        steps = plan([want], [broken, container("good", want)])
        assert steps == [Step("remove", None, "bad", "not wanted")]

    def test_a_container_missing_one_label_is_removed(self) -> None:
        want = spec("svc")
        info = container("c1", want)
        del info.labels[LABEL_SUBJECT]
        assert plan([want], [info])[0] == Step("remove", None, "c1", "not wanted")


class TestCreations:
    def test_a_missing_instance_is_loaded_created_and_started(self) -> None:
        want = spec("svc")
        assert plan([want], []) == [
            Step("load_image", want.key, reason=IMG1),
            Step("create", want.key),
            Step("start", want.key),
        ]

    def test_each_image_is_loaded_once(self) -> None:
        specs = [spec("a", 0), spec("a", 1), spec("b", 0, image=IMG2), spec("c", 0)]
        loads = [s.reason for s in plan(specs, []) if s.action == "load_image"]
        assert sorted(loads) == [IMG1, IMG2]

    def test_the_image_is_loaded_before_its_first_create(self) -> None:
        specs = [spec("b", image=IMG2), spec("a", image=IMG1)]
        steps = plan(specs, [])
        for s in specs:
            load = steps.index(Step("load_image", s.key, reason=s.image.config_digest))
            assert load < steps.index(Step("create", s.key)) < steps.index(Step("start", s.key))

    def test_removals_come_before_everything_else(self) -> None:
        specs = [spec("a"), spec("b", version="2")]
        containers = [container("x", spec("zz")), container("y", spec("b", version="1"))]
        kinds = [s.action for s in plan(specs, containers)]
        assert kinds[:2] == ["remove", "remove"]
        assert "remove" not in kinds[2:]


class TestStarts:
    @pytest.mark.parametrize("status", ["exited", "created", "dead"])
    def test_a_stopped_container_is_started(self, status: str) -> None:
        want = spec("svc")
        steps = plan([want], [container("c1", want, status=status)])
        assert steps == [Step("start", want.key, "c1", f"was {status}")]

    def test_a_paused_container_is_unpaused(self) -> None:
        want = spec("svc")
        steps = plan([want], [container("c1", want, status="paused")])
        assert steps == [Step("unpause", want.key, "c1", "was paused")]

    def test_a_container_the_engine_restarts_is_left_to_the_engine(self) -> None:
        want = spec("svc")
        assert plan([want], [container("c1", want, status="restarting")]) == []

    def test_a_running_container_needs_nothing(self) -> None:
        specs = [spec("a"), spec("b", image=IMG2)]
        assert plan(specs, [container("c1", specs[0]), container("c2", specs[1])]) == []


class TestInstanceState:
    @pytest.mark.parametrize(
        ("status", "health", "state"),
        [
            ("running", None, InstanceState.ACTIVE),
            ("running", "healthy", InstanceState.ACTIVE),
            ("running", "starting", InstanceState.ACTIVATING),
            ("created", None, InstanceState.ACTIVATING),
            ("paused", None, InstanceState.INACTIVE),
        ],
    )
    def test_states_without_error(self, status: str, health: str | None, state) -> None:
        assert instance_state(container("c", spec("a"), status=status, health=health)) == (
            state,
            None,
        )

    def test_unhealthy_is_failed(self) -> None:
        state, error = instance_state(container("c", spec("a"), health="unhealthy"))
        assert state == InstanceState.FAILED
        assert error is not None and "health" in error.message

    def test_exited_is_failed_with_its_exit_code(self) -> None:
        state, error = instance_state(container("c", spec("a"), status="exited", exit_code=137))
        assert state == InstanceState.FAILED
        assert error is not None
        assert error.exit_code == 137
        assert error.aos_code == AosCode.RUNTIME
        assert "137" in error.message and "exited" in error.message

    @pytest.mark.parametrize(
        ("started", "restarts", "health", "state"),
        [
            ("2026-11-22T10:00:09.500000000Z", 0, None, InstanceState.ACTIVATING),
            ("2026-11-22T10:00:08.900000000Z", 0, None, InstanceState.ACTIVE),
            ("2026-11-22T10:00:09.500000000Z", 2, None, InstanceState.FAILED),
            ("2026-11-22T10:00:01.000000000Z", 2, None, InstanceState.ACTIVE),
            ("2026-11-22T10:00:09.500000000Z", 0, "healthy", InstanceState.ACTIVE),
            ("2026-11-22T10:00:01.000000000Z", 0, "starting", InstanceState.ACTIVATING),
        ],
    )
    def test_running_counts_as_active_only_once_settled(
        self, started: str, restarts: int, health: str | None, state: InstanceState
    ) -> None:
        now = datetime(2026, 11, 22, 10, 0, 10, tzinfo=UTC).timestamp()
        info = replace(
            container("c", spec("a"), health=health), started_at=started, restart_count=restarts
        )
        assert instance_state(info, now, settle_s=1.0)[0] == state

    def test_a_container_that_could_not_start_is_failed(self) -> None:
        info = replace(
            container("c", spec("a"), status="created", exit_code=127),
            error='exec: "/bin/nope": no such file or directory',
        )
        state, error = instance_state(info)
        assert state == InstanceState.FAILED
        assert error is not None and error.exit_code == 127 and "/bin/nope" in error.message

    def test_a_crash_looping_container_is_failed_not_activating(self) -> None:
        info = container("c", spec("a"), status="restarting", exit_code=3)
        state, error = instance_state(info)
        assert state == InstanceState.FAILED
        assert error is not None and error.exit_code == 3 and "keeps exiting" in error.message

    def test_no_container_is_failed_not_found(self) -> None:
        state, error = instance_state(None)
        assert state == InstanceState.FAILED
        assert error is not None and error.aos_code == AosCode.NOT_FOUND

    def test_states_by_key_prefers_the_running_container(self) -> None:
        want = spec("a")
        infos = [container("a1", want, status="exited", exit_code=1), container("z9", want)]
        assert states_by_key(infos) == {want.key: infos[1]}
        assert states_by_key([container("bad", None)]) == {}


# --- property: plan, apply, and the engine runs exactly what is wanted ----------------------------


@dataclass
class FakeEngine:
    """A tiny engine with memory: containers by id, images loaded, and strict step checks."""

    containers: dict[str, ContainerInfo]
    images: set[str] = field(default_factory=set)
    ids: itertools.count = field(default_factory=itertools.count)

    def apply(self, steps: list[Step], specs: list[InstanceSpec]) -> None:
        by_key = {s.key: s for s in specs}
        created: dict[InstanceKey, str] = {}
        for step in steps:
            if step.action == "remove":
                assert step.container_id in self.containers, "removes what does not exist"
                del self.containers[step.container_id]
            elif step.action == "load_image":
                self.images.add(step.reason)
            elif step.action == "create":
                assert step.key is not None
                s = by_key[step.key]
                assert s.image.config_digest in self.images, "creates before loading its image"
                cid = f"new{next(self.ids)}"
                self.containers[cid] = container(cid, s, status="created")
                created[step.key] = cid
            elif step.action in ("start", "unpause"):
                assert step.key is not None
                cid = step.container_id or created[step.key]
                self.containers[cid] = replace(self.containers[cid], status="running")
            else:
                raise AssertionError(step.action)


ITEMS = ["a", "b", "c"]
specs_st = st.lists(
    st.builds(
        spec,
        st.sampled_from(ITEMS),
        st.integers(0, 1),
        st.sampled_from(["1.0", "2.0"]),
        st.sampled_from([IMG1, IMG2]),
    ),
    max_size=5,
    unique_by=lambda s: s.key,
)


@st.composite
def containers_st(draw) -> dict[str, ContainerInfo]:
    out = {}
    for n in range(draw(st.integers(0, 6))):
        cid = f"old{n}"
        if draw(st.integers(0, 5)) == 0:
            out[cid] = container(cid, None, instance=draw(st.sampled_from(["x", "1"])))
            continue
        base = draw(specs_st.filter(bool).map(lambda specs: specs[0]))
        out[cid] = container(
            cid,
            base,
            status=draw(st.sampled_from(["running", "exited", "created", "paused"])),
            exit_code=0,
        )
    return out


class TestConvergence:
    @settings(max_examples=80, deadline=None)
    @given(specs_st, containers_st())
    def test_one_running_container_per_wanted_instance(self, specs, containers) -> None:
        engine = FakeEngine(dict(containers))
        steps = plan(specs, list(containers.values()))
        engine.apply(steps, specs)
        by_key: dict[InstanceKey | None, list[ContainerInfo]] = {}
        for info in engine.containers.values():
            by_key.setdefault(container_key(info), []).append(info)
        assert set(by_key) == {s.key for s in specs}
        for s in specs:
            (info,) = by_key[s.key]
            assert info.status == "running"
            assert info.labels[LABEL_VERSION] == s.version
            assert info.labels[LABEL_IMAGE] == s.image.config_digest
        # level-triggered: planning again from the result finds nothing to do
        assert plan(specs, list(engine.containers.values())) == []

    @settings(max_examples=60, deadline=None)
    @given(specs_st, containers_st())
    def test_removals_first_and_each_image_loaded_at_most_once(self, specs, containers) -> None:
        steps = plan(specs, list(containers.values()))
        kinds = [s.action for s in steps]
        first_other = next((i for i, k in enumerate(kinds) if k != "remove"), len(kinds))
        assert "remove" not in kinds[first_other:]
        loads = [s.reason for s in steps if s.action == "load_image"]
        assert len(loads) == len(set(loads))
        # a container that is kept is never removed, nor created again
        removed = {s.container_id for s in steps if s.action == "remove"}
        assert len(removed) == kinds.count("remove")
