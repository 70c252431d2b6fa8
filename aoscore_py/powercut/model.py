"""A stateful model of a three-node unit of real processes: hypothesis chooses the steps (push
a desired status from a small pool, cut the CM, cut a node's power, take the cloud away and
bring it back), and after each step the invariants (invariants.py) must hold; once the unit
has settled, it must have converged on the latest desired status (`ThreeNodeUnit.check`).

Three layers, so that each can be reused:

- `ModelBench`: what every example shares and is expensive to make (the registry, the cloud
  on a fixed port so that it can be stopped and started again, the published images), opened
  once per test session or bench run by `open_bench`.
- `UnitModel`: one unit of real processes and the steps on it, each a small method. Each
  process keeps its data on a lossy file system of its own (power.py; `fs="plain"` for plain
  folders), so a cut is a power loss: the CM's is SIGKILL and its disk cut; a node's kills its
  SM and its containers and cuts its disk; then what was cut boots again.
- `UnitMachine`: the hypothesis `RuleBasedStateMachine` over a `UnitModel` (`machine_for`
  binds it to a bench and a seed). It needs hypothesis, a development dependency.

A failing example prints its steps (hypothesis's falsifying example, and the `model.step` log
lines) and the seed it was generated from; `run_examples` and the test take the seed
(`--hypothesis-seed=N`, or AOSCORE_MODEL_SEED=N) and generate the same steps again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..cloud.registry import Registry
from ..errors import AosError
from ..logs import get_logger
from ..protocol import DesiredInstance, DesiredStatus, Identity, dump_message
from ..sm.docker_runtime import DockerRuntime
from ..sm.state import FILE_NAME as SM_STATE_FILE
from . import invariants
from .gate import TcpGate, free_port
from .matrix import Images, acked_after_cut, held_desired, publish_images
from .power import PoweredUnit
from .scenarios import ALPHA, BETA, NODES, SUBJECT, desired, upgraded
from .testbed import TEST_RECONNECT, CloudProcess, remove_unit_containers
from .unit import CM, ThreeNodeUnit

log = get_logger("powercut.model")

SETTLE_TIMEOUT_S = 150.0
PUSH_TIMEOUT_S = 30.0
STEPS_ENV = "AOSCORE_MODEL_STEPS"
EXAMPLES_ENV = "AOSCORE_MODEL_EXAMPLES"
SEED_ENV = "AOSCORE_MODEL_SEED"
SHRINK_ENV = "AOSCORE_MODEL_SHRINK"

INSTALL, UPGRADE, FEWER = "install", "upgrade", "fewer"
CLOUD_STOPPED, CLOUD_UNREACHABLE = "stopped", "unreachable"


def pool(images: Images) -> dict[str, DesiredStatus]:
    """The desired statuses the model pushes: the matrix's install, its upgrade of svc-alpha,
    and the install with one instance of each item (two containers removed)."""
    install = desired(images.items)
    fewer = replace(
        install,
        instances=tuple(
            DesiredInstance(Identity(id=item), Identity(id=SUBJECT), 10, 1)
            for item in (ALPHA, BETA)
        ),
    )
    return {INSTALL: install, UPGRADE: upgraded(images.items, images.alpha2), FEWER: fewer}


@dataclass
class ModelBench:
    """What every example shares: made once, since publishing images takes seconds."""

    work: Path
    cloud: CloudProcess
    images: Images
    runtime: DockerRuntime

    @property
    def statuses(self) -> dict[str, DesiredStatus]:
        return pool(self.images)


@contextlib.contextmanager
def open_bench(work: Path) -> Iterator[ModelBench]:
    """A registry, the reference cloud on a fixed ws port (a restarted cloud is dialled at
    the same address) and the matrix's images; all stopped at the end.

    Raises:
        AosError: the Docker engine does not answer.
    """
    work.mkdir(parents=True, exist_ok=True)
    runtime = DockerRuntime()
    runtime.ping()
    try:
        with Registry(work / "registry") as registry:
            extra = ("--port", str(free_port()))
            cloud = CloudProcess(work / "cloud", registry.url, extra=extra)
            cloud.start()
            try:
                yield ModelBench(work, cloud, publish_images(cloud, registry.url), runtime)
            finally:
                cloud.stop()
    finally:
        runtime.close()


class ReopenableGate(TcpGate):
    """A `TcpGate` that can be shut (connections cut, port refusing) and opened again: the
    unit's network to the cloud going away and coming back, the cloud itself untouched."""

    def shut(self) -> None:
        """Stop listening and cut the connections in flight; `open()` listens again."""
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5.0)
        self._server = None
        log.info("gate.shut", port=self.port)


@dataclass
class Stats:
    """What a run did, for the bench: examples, steps, and the failing examples' seeds.

    `examples` counts every example hypothesis ran, the replay it makes of a failing one to
    print its steps included."""

    examples: int = 0
    steps: int = 0
    failures: list[dict[str, object]] = field(default_factory=list)


class UnitModel:
    """One unit of real processes (the CM and three SMs) behind a gate to the shared cloud,
    its engine events recorded, and the steps the model takes on it.

    Args:
        bench: the shared registry, cloud and images.
        fs: `lossy` (each process's data dir on a lossy file system, cut at each power loss)
            or `plain`.
    """

    def __init__(self, bench: ModelBench, fs: str = "lossy") -> None:
        self.bench = bench
        self.statuses = bench.statuses
        unit_id = f"model-{uuid.uuid4().hex[:8]}"
        self.unit = ThreeNodeUnit(
            unit_id, bench.work / unit_id, bench.cloud, agent_extra=TEST_RECONNECT
        )
        url = urlsplit(bench.cloud.ws_url)
        self.gate = ReopenableGate(url.hostname or "127.0.0.1", url.port or 80)
        self.gate.open()
        self.unit.gate = self.gate
        self.unit.cloud_url = urlunsplit(url._replace(netloc=f"127.0.0.1:{self.gate.port}"))
        self.power = PoweredUnit(self.unit, fs)
        try:
            self.power.mount_all()
        except BaseException:
            self.power.stop_all()
            self.gate.close()
            raise
        self.cuts: list[str] = []
        self.after_cut: list[str] = []
        self.events = invariants.EngineEvents(bench.runtime.client, unit_id).start()
        self.latest: str | None = None
        self.cloud_away: str | None = None
        self.lost_nodes: set[str] = set()
        self.power_back_at: float | None = None
        self.steps: list[str] = []

    @property
    def unit_id(self) -> str:
        return self.unit.unit

    def _step(self, text: str) -> None:
        self.steps.append(text)
        log.info("model.step", unit=self.unit_id, n=len(self.steps), step=text)

    # --- steps ----------------------------------------------------------------------------

    def start(self, first: str) -> None:
        """Store the first desired status and start the CM, then the three SMs."""
        self._step(f"start with {first}")
        self._store(first)
        self.unit.start_agent()
        if self.unit.wait_listening():
            self.unit.start_missing_sms()

    def push(self, name: str) -> None:
        """Give the unit a desired status: through the operator API when the cloud runs (it
        answers with the unit's ack, or stores it for the next connect), into its store when
        it does not."""
        self._step(f"push {name}" + (f" (cloud {self.cloud_away})" if self.cloud_away else ""))
        self.latest = name
        if self.cloud_away == CLOUD_STOPPED:
            self._store(name)
            return
        timeout = 3.0 if self.cloud_away else PUSH_TIMEOUT_S
        answer = _push(self.bench.cloud, self.unit_id, self.statuses[name], timeout)
        log.info("model.pushed", unit=self.unit_id, status=name, answer=answer)

    def _store(self, name: str) -> None:
        """Store `name` as the cloud does for a push (the next seq), for its next connect."""
        self.latest = name
        stored = self.bench.cloud.state.desired_seqs(self.unit_id)
        last = max((s for s, _ in stored if s is not None), default=0)
        ds = replace(self.statuses[name], seq=last + 1)
        self.bench.cloud.state.save_desired(self.unit_id, dump_message(ds))

    def cut_cm(self) -> None:
        """The CM's power: SIGKILL, its file system cut, started again."""
        self._step("cut the CM")
        self.power.cut(CM)
        self.cuts.append(CM)
        self.after_cut += acked_after_cut(self.unit)  # before the cloud can send it again
        self.unit.start_agent()
        if self.unit.wait_listening():
            self.unit.start_missing_sms()

    def cut_node(self, node: str) -> None:
        """A node's power: its SM SIGKILLed and its containers killed, its file system cut,
        its SM started again (which starts the containers again, not as crashes)."""
        self._step(f"cut {node}")
        self.power.node_power_loss(node, self.bench.runtime)
        self.cuts.append(node)
        self.lost_nodes.add(node)
        self.power_back_at = self.power_back_at or time.time()
        self.unit.start_sm(node)

    def take_cloud_away(self, how: str) -> None:
        """The cloud stopped (its process), or unreachable (the unit's gate shut)."""
        self._step(f"cloud {how}")
        if how == CLOUD_STOPPED:
            self.bench.cloud.stop()
        else:
            self.gate.shut()
        self.cloud_away = how

    def bring_cloud_back(self) -> None:
        self._step(f"cloud back (was {self.cloud_away})")
        self._cloud_back()

    def _cloud_back(self) -> None:
        if self.cloud_away == CLOUD_STOPPED:
            self.bench.cloud.start()
        elif self.cloud_away == CLOUD_UNREACHABLE:
            self.gate.open()
        self.cloud_away = None

    # --- checks ---------------------------------------------------------------------------

    def check(self) -> list[str]:
        """Every invariant, now (answers read before the CM's store: it stores, then acks)."""
        state = self.bench.cloud.state
        answers = state.answers(self.unit_id)
        problems = invariants.acked_in_force(
            state.desired_seqs(self.unit_id), answers, held_desired(self.unit.data_dir)
        )
        timeline = state.timeline(self.unit_id)
        problems += self.after_cut
        problems += invariants.seqs_never_go_back(timeline)
        problems += invariants.no_instance_ran_twice(self.events.events())
        if self.power_back_at is not None:
            since = [
                r["unitStatus"] for r in timeline if r["receivedAt"] >= self.power_back_at - 1.0
            ]
            problems += invariants.crashes_reported(since, self.lost_nodes)
        for node in sorted(self.lost_nodes):
            path = self.unit.sm_dir(node) / "sm" / SM_STATE_FILE
            problems += invariants.crashes_counted(node, invariants.read_sm_state(path))
        return problems

    def settle(self, timeout_s: float = SETTLE_TIMEOUT_S) -> list[str]:
        """Bring the cloud back, start whatever is not running, and wait until the unit has
        converged on the latest desired status; what is still wrong then (empty: settled)."""
        self._step("settle")
        self._cloud_back()
        if self.unit.agent is None or self.unit.agent.proc.poll() is not None:
            self.unit.start_agent()
            self.unit.wait_listening()
        self.unit.start_missing_sms()
        if self.latest is None:
            return []
        ds = self.statuses[self.latest]
        deadline = time.monotonic() + timeout_s
        while True:
            problems = list(self.unit.check(ds, self.bench.runtime).problems)
            if not problems or time.monotonic() >= deadline:
                break
            time.sleep(0.5)
        return problems + self.check()

    def close(self) -> None:
        """Stop the unit's processes and the recording, remove its containers; the cloud is
        left running for the next example."""
        with contextlib.suppress(Exception):
            self._cloud_back()
        self.events.stop()
        self.power.stop_all()
        remove_unit_containers(self.bench.runtime, self.unit_id)


def _push(cloud: CloudProcess, unit: str, ds: DesiredStatus, timeout_s: float) -> dict:
    from .testbed import push

    try:
        return push(cloud, unit, ds, timeout_s)
    except (AosError, OSError, TimeoutError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


# --- the hypothesis state machine ---------------------------------------------------------------


def default_settings(examples: int | None = None, steps: int | None = None) -> settings:
    """Small enough for CI: 2 examples of 4 steps, unless AOSCORE_MODEL_EXAMPLES and
    AOSCORE_MODEL_STEPS (or the arguments) say otherwise. No deadline (a step takes seconds),
    no shrinking unless AOSCORE_MODEL_SHRINK=1 (each replay costs a unit's minute), and no
    example database: a failure is replayed from its seed, the same steps again."""
    phases = [Phase.explicit, Phase.reuse, Phase.generate]
    if os.environ.get(SHRINK_ENV) == "1":
        phases.append(Phase.shrink)
    return settings(
        max_examples=examples or int(os.environ.get(EXAMPLES_ENV, "2")),
        stateful_step_count=steps or int(os.environ.get(STEPS_ENV, "4")),
        deadline=None,
        phases=phases,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )


class UnitMachine(RuleBasedStateMachine):
    """Rules over one `UnitModel` per example; `bench` and `stats` are set by `machine_for`."""

    bench: ModelBench
    stats: Stats
    fs: str = "lossy"

    def __init__(self) -> None:
        super().__init__()
        self.model = UnitModel(self.bench, self.fs)
        self.failed = False
        self.stats.examples += 1

    def _do(self, step: Callable[..., object], *args: str) -> None:
        """Take one step, counted; an error in it marks the example failed (teardown then
        only cleans up, so the error is the one reported)."""
        self.stats.steps += 1
        try:
            step(*args)
        except BaseException:
            self.failed = True
            raise

    @initialize(first=st.sampled_from([INSTALL, UPGRADE, FEWER]))
    def start(self, first: str) -> None:
        self._do(self.model.start, first)

    @rule(name=st.sampled_from([INSTALL, UPGRADE, FEWER]))
    def push(self, name: str) -> None:
        self._do(self.model.push, name)

    @rule()
    def cut_cm(self) -> None:
        self._do(self.model.cut_cm)

    @rule(node=st.sampled_from(NODES))
    def cut_node(self, node: str) -> None:
        self._do(self.model.cut_node, node)

    @precondition(lambda self: self.model.cloud_away is None)
    @rule(how=st.sampled_from([CLOUD_STOPPED, CLOUD_UNREACHABLE]))
    def take_cloud_away(self, how: str) -> None:
        self._do(self.model.take_cloud_away, how)

    @precondition(lambda self: self.model.cloud_away is not None)
    @rule()
    def bring_cloud_back(self) -> None:
        self._do(self.model.bring_cloud_back)

    @rule()
    def settle(self) -> None:
        self._do(self._settled)

    def _settled(self) -> None:
        problems = self.model.settle()
        assert not problems, self._report(problems)

    @invariant()
    def invariants_hold(self) -> None:
        problems = self.model.check()
        assert not problems, self._report(problems)

    def _report(self, problems: list[str]) -> str:
        """The assertion's message: the problems, the unit's folder and the steps so far."""
        self.failed = True
        return (
            f"unit {self.model.unit_id} ({self.model.unit.root}): "
            + "; ".join(problems[:5])
            + "\nsteps: "
            + " -> ".join(self.model.steps)
        )

    def teardown(self) -> None:
        """Settle and check convergence on the latest desired status, unless a step failed
        already; then stop the unit."""
        try:
            if not self.failed:
                self._settled()
        finally:
            self.model.close()


def machine_for(bench: ModelBench, stats: Stats, n: int, fs: str = "lossy") -> type[UnitMachine]:
    """`UnitMachine` bound to `bench`, counting into `stats`, generating from seed `n`."""
    bound = type(
        "UnitMachine",
        (UnitMachine,),
        {"bench": bench, "stats": stats, "fs": fs},
    )
    return seed(n)(bound)


def choose_seed(given: int | None = None) -> int:
    """The seed to generate from: `given`, else AOSCORE_MODEL_SEED, else a random one."""
    if given is not None:
        return given
    env = os.environ.get(SEED_ENV)
    return int(env) if env else random.randrange(2**32)


def run_examples(
    bench: ModelBench, examples: int, steps: int | None = None, first_seed: int | None = None
) -> Stats:
    """Run `examples` examples. Hypothesis stops a run at its first failure, so after one the
    rest run from the next seed; each failure is kept with its seed, how many examples that
    run made (the failing one last) and the error, which is what a replay needs:
    `first_seed` = that seed and `examples` = that count generate the same steps again."""
    stats = Stats()
    n = choose_seed(first_seed)
    while stats.examples < examples:
        before = stats.examples
        log.info("model.run", seed=n, examples=examples - before)
        try:
            run_state_machine_as_test(
                machine_for(bench, stats, n), settings=default_settings(examples - before, steps)
            )
        except Exception as exc:
            made = stats.examples - before
            log.error("model.failed", seed=n, examples=made, error=str(exc)[:2000])
            stats.failures.append({"seed": n, "examples": made, "error": str(exc)[:2000]})
        if stats.examples == before:
            break  # hypothesis made none: nothing more to run
        n = (n + 1) % 2**32
    return stats
