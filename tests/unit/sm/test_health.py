"""Instance health with a fake clock: state from container facts, crash counting, the backoff
schedule and its reset, reboots not counted, and the errorInfo text."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aoscore_py.errors import AosCode, RemoteError
from aoscore_py.nodes.itemconfig import RunParameters
from aoscore_py.protocol import InstanceState
from aoscore_py.sm import health
from aoscore_py.sm.health import (
    CRASH_LOOP,
    IMAGE_PULL,
    START_FAILURE,
    Backoff,
    Facts,
    HealthRecord,
    container_state,
    counts_as_crash,
    error_info,
    exit_identity,
    instance_state,
    may_start,
    observe,
    parse_duration,
    parse_time,
    target_of,
)

from .stubs import IMG1, T0, FakeClock, container, layout, spec

WANT = spec("svc")
TARGET = target_of(WANT)
BOOTED = Facts(now=T0, sm_started=T0 - 3600, host_boot=T0 - 7200)


def at(clock: FakeClock) -> Facts:
    return replace(BOOTED, now=clock.now)


def exited(cid: str, started: float, finished: float, code: int = 3):
    return container(cid, WANT, status="exited", exit_code=code, started=started, finished=finished)


class TestBackoff:
    def test_the_schedule_doubles_from_10_s_to_300_s(self) -> None:
        delays = [Backoff().delay(n) for n in range(1, 9)]
        assert delays == [10, 20, 40, 80, 160, 300, 300, 300]

    def test_it_never_overflows(self) -> None:
        assert Backoff().delay(10_000) == 300

    def test_a_burst_waits_the_base_before_doubling(self) -> None:
        backoff = Backoff(base_s=1, burst=3)
        assert [backoff.delay(n) for n in range(1, 7)] == [1, 1, 1, 2, 4, 8]

    def test_run_parameters_override_it(self) -> None:
        backoff = Backoff.from_run_parameters(
            {"restartInterval": "2s", "StartBurst": 2, "startInterval": "PT1M"}
        )
        assert backoff == Backoff(base_s=2, cap_s=300, burst=2, reset_after_s=60)
        assert Backoff.from_run_parameters(None) == Backoff()
        assert Backoff.from_run_parameters({}) == Backoff()

    def test_an_item_configs_run_parameters_override_what_they_name(self) -> None:
        fast = Backoff(base_s=0.5, cap_s=5)
        assert Backoff.from_item(RunParameters(), fast) is None  # the default applies
        assert Backoff.from_item(RunParameters(restart_interval=2.0), fast) == Backoff(
            base_s=2.0, cap_s=5
        )
        full = RunParameters(start_interval=60.0, start_burst=3, restart_interval=1.0)
        assert Backoff.from_item(full) == Backoff(base_s=1, cap_s=300, burst=3, reset_after_s=60)
        assert Backoff.from_item(RunParameters(start_burst=0)) == Backoff(burst=1)

    def test_the_target_names_the_item_config(self) -> None:
        plain = spec("svc")
        limited = replace(plain, image=layout(item_config="sha256:" + "e" * 64))
        assert target_of(plain) == "1.0@" + IMG1
        assert target_of(limited) == f"1.0@{IMG1}+sha256:{'e' * 64}"

    @pytest.mark.parametrize(
        ("params", "field"),
        [
            ({"restartInterval": "soon"}, "restartinterval"),
            ({"startInterval": -1}, "startinterval"),
            ({"startBurst": "3"}, "startBurst"),
            ({"startBurst": True}, "startBurst"),
        ],
    )
    def test_bad_run_parameters_name_the_field(self, params: dict, field: str) -> None:
        with pytest.raises(RemoteError, match=field) as raised:
            Backoff.from_run_parameters(params)
        assert raised.value.code == AosCode.INVALID_ARGUMENT

    @pytest.mark.parametrize(
        ("text", "seconds"),
        [
            (5, 5.0),
            (0.5, 0.5),
            ("10", 10.0),
            ("10s", 10.0),
            ("1m30s", 90.0),
            ("1h", 3600.0),
            ("250ms", 0.25),
            ("1.5s", 1.5),
            ("PT10S", 10.0),
            ("PT1M30S", 90.0),
            ("P1DT1H", 90000.0),
            ("pt0.5s", 0.5),
        ],
    )
    def test_durations(self, text: object, seconds: float) -> None:
        assert parse_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", ["", "P", "PT", "10x", "s10", "1m 30s", None, [], True, -5])
    def test_not_durations(self, text: object) -> None:
        with pytest.raises(ValueError):
            parse_duration(text)


class TestCrashCounting:
    def test_each_exit_is_counted_once_and_schedules_the_next_start(self) -> None:
        clock = FakeClock(T0)
        record = HealthRecord(TARGET)
        info = exited("c1", T0 - 2, T0 - 1)
        record = observe(record, info, Backoff(), at(clock), log="boom\n")
        assert (record.crashes, record.reason, record.next_start_at) == (1, CRASH_LOOP, T0 + 9)
        assert record.last_exit == exit_identity(info)
        assert observe(record, info, Backoff(), at(clock)) == record, "seen already"
        assert not may_start(record, at(clock))
        clock.advance(9)
        assert may_start(record, at(clock))

    def test_a_crash_loop_backs_off_until_300_s_and_never_gives_up(self) -> None:
        clock = FakeClock(T0)
        record = HealthRecord(TARGET)
        waits = []
        for n in range(9):
            started = clock.now
            clock.advance(0.2)
            record = observe(record, exited("c1", started, clock.now), Backoff(), at(clock))
            waits.append(record.next_start_at - clock.now)
            clock.now = record.next_start_at
            assert may_start(record, at(clock)), f"start {n} is allowed after its backoff"
        assert waits == pytest.approx([10, 20, 40, 80, 160, 300, 300, 300, 300], abs=1e-3)
        assert record.crashes == 9 and not record.permanent

    def test_ten_healthy_minutes_reset_the_counter(self) -> None:
        clock = FakeClock(T0)
        record = HealthRecord(TARGET, crashes=4, last_exit="c1/x", reason=CRASH_LOOP)
        running = container("c1", WANT, started=T0)
        clock.advance(599)
        assert observe(record, running, Backoff(), at(clock)) == record
        clock.advance(1)
        reset = observe(record, running, Backoff(), at(clock))
        assert (reset.crashes, reset.reason, reset.last_exit) == (0, "", "c1/x")

    def test_an_unhealthy_run_does_not_reset_the_counter(self) -> None:
        record = HealthRecord(TARGET, crashes=4, reason=CRASH_LOOP)
        sick = container("c1", WANT, started=T0 - 3600, health="unhealthy")
        assert observe(record, sick, Backoff(), BOOTED) == record

    def test_a_long_run_before_the_crash_counts_it_as_the_first(self) -> None:
        record = HealthRecord(TARGET, crashes=5, last_exit="c1/old", reason=CRASH_LOOP)
        info = exited("c1", T0 - 1000, T0 - 1)
        record = observe(record, info, Backoff(), BOOTED)
        assert (record.crashes, record.next_start_at) == (1, T0 + 9)

    def test_a_start_refused_by_the_engine_is_a_start_failure(self) -> None:
        info = container(
            "c1", WANT, status="created", exit_code=127, error='exec: "/bin/nope": not found'
        )
        record = observe(HealthRecord(TARGET), info, Backoff(), BOOTED, log="")
        assert (record.reason, record.crashes, record.last_exit) == (
            START_FAILURE,
            1,
            "c1/start-failed",
        )
        assert '"/bin/nope"' in record.detail and "exit code 127" in record.detail

    def test_a_start_failure_seen_by_the_executor_is_not_counted_again(self) -> None:
        record = health.start_failed(
            HealthRecord(TARGET), "c1", "exec failed", 0, Backoff(), BOOTED
        )
        info = container("c1", WANT, status="created", exit_code=127, error="exec failed")
        assert observe(record, info, Backoff(), BOOTED) == record
        assert record.detail == "container did not start: exec failed"

    def test_an_image_that_cannot_run_here_is_not_retried(self) -> None:
        record = health.image_failed(
            HealthRecord(TARGET), int(AosCode.NOT_SUPPORTED), "built for arm64", Backoff(), BOOTED
        )
        assert record.permanent and record.reason == IMAGE_PULL
        assert not may_start(record, replace(BOOTED, now=T0 + 10**6))
        transient = health.image_failed(
            HealthRecord(TARGET), int(AosCode.RUNTIME), "engine busy", Backoff(), BOOTED
        )
        assert not transient.permanent and transient.next_start_at == T0 + 10
        assert health.image_loaded(transient) == HealthRecord(TARGET)

    def test_a_failed_replacement_is_counted_once(self) -> None:
        info = exited("new", T0 - 2, T0 - 1)
        once = observe(HealthRecord(TARGET), info, Backoff(), BOOTED)
        assert health.replacement_failed(once, info, Backoff(), BOOTED) == once
        sick = container("new", WANT, started=T0 - 60, health="unhealthy")
        counted = health.replacement_failed(HealthRecord(TARGET), sick, Backoff(), BOOTED)
        assert (counted.crashes, counted.reason, counted.detail) == (
            1,
            CRASH_LOOP,
            "health check failing",
        )


class TestReboot:
    def test_an_exit_before_this_service_manager_started_is_not_a_crash(self) -> None:
        facts = Facts(now=T0, sm_started=T0 - 10, host_boot=T0 - 60)
        info = exited("c1", T0 - 30, T0 - 20)
        assert not counts_as_crash(info, facts)
        record = observe(HealthRecord(TARGET, crashes=2, reason=CRASH_LOOP), info, Backoff(), facts)
        assert (record.crashes, record.next_start_at) == (2, T0), "started again at once"
        assert record.last_exit == exit_identity(info)

    def test_a_run_begun_before_the_host_booted_ended_with_the_reboot(self) -> None:
        # An unclean power cut: the engine marks the container exited only after the boot.
        facts = Facts(now=T0, sm_started=T0 - 100, host_boot=T0 - 60)
        info = exited("c1", T0 - 3600, T0 - 50, code=255)
        assert not counts_as_crash(info, facts)
        state, error = instance_state(info, HealthRecord(TARGET), facts)
        assert (state, error) == (InstanceState.ACTIVATING, None)

    def test_a_crash_after_both_boots_is_counted(self) -> None:
        facts = Facts(now=T0, sm_started=T0 - 100, host_boot=T0 - 200)
        assert counts_as_crash(exited("c1", T0 - 50, T0 - 40), facts)


class TestState:
    @pytest.mark.parametrize(
        ("started", "health", "state"),
        [
            (T0 - 0.5, None, InstanceState.ACTIVATING),
            (T0 - 1.0, None, InstanceState.ACTIVE),
            (T0 - 0.1, "healthy", InstanceState.ACTIVE),
            (T0 - 90, "starting", InstanceState.ACTIVATING),
            (T0 - 90, "unhealthy", InstanceState.FAILED),
        ],
    )
    def test_running(self, started: float, health: str | None, state: InstanceState) -> None:
        info = container("c", WANT, started=started, health=health)
        assert container_state(info, Facts(now=T0, settle_s=1.0)) == state

    def test_the_stability_window_is_configurable(self) -> None:
        info = container("c", WANT, started=T0 - 3)
        assert container_state(info, Facts(now=T0, settle_s=5)) == InstanceState.ACTIVATING

    def test_paused_is_inactive_and_created_is_activating(self) -> None:
        assert container_state(container("c", WANT, status="paused"), BOOTED) == (
            InstanceState.INACTIVE
        )
        assert container_state(container("c", WANT, status="created"), BOOTED) == (
            InstanceState.ACTIVATING
        )

    def test_a_crash_loop_reports_its_exit_code_log_and_next_start(self) -> None:
        info = exited("c1", T0 - 2, T0 - 1)
        record = observe(
            HealthRecord(TARGET), info, Backoff(), BOOTED, log="starting\npanic: no config\n"
        )
        state, error = instance_state(info, record, replace(BOOTED, now=T0 + 1))
        assert state == InstanceState.FAILED
        assert error is not None
        assert (error.aos_code, error.exit_code) == (AosCode.RUNTIME, 3)
        assert error.message == (
            "CrashLoopBackOff: container keeps exiting (exit code 3, crash 1); "
            "last log: starting | panic: no config; next start in 8 s"
        )

    def test_a_restart_after_a_crash_is_failed_until_it_proves_stable(self) -> None:
        record = HealthRecord(TARGET, crashes=1, last_exit="c1/x", reason=CRASH_LOOP, detail="d")
        info = container("c1", WANT, started=T0 - 0.3)
        assert instance_state(info, record, BOOTED)[0] == InstanceState.FAILED
        settled = container("c1", WANT, started=T0 - 1.5)
        assert instance_state(settled, record, BOOTED) == (InstanceState.ACTIVE, None)

    def test_an_exit_not_yet_observed_is_failed_with_what_the_container_shows(self) -> None:
        state, error = instance_state(exited("c1", T0 - 2, T0 - 1, code=9), None, BOOTED)
        assert state == InstanceState.FAILED and error is not None
        assert error.exit_code == 9 and error.message.startswith("CrashLoopBackOff:")

    def test_an_image_that_cannot_load_is_failed_with_err_image_pull(self) -> None:
        record = health.image_failed(
            HealthRecord(TARGET),
            int(AosCode.NOT_SUPPORTED),
            "the image is built for linux/arm64, this node runs linux/amd64",
            Backoff(),
            BOOTED,
        )
        state, error = instance_state(None, record, BOOTED)
        assert state == InstanceState.FAILED and error is not None
        assert error.aos_code == AosCode.NOT_SUPPORTED
        assert error.message == (
            "ErrImagePull: the image is built for linux/arm64, this node runs linux/amd64; "
            "not retried for this version"
        )

    def test_error_info_without_a_reason_says_start_failure(self) -> None:
        assert error_info(HealthRecord(detail="d"), BOOTED).message == "StartFailure: d"

    @pytest.mark.parametrize(
        ("stamp", "seconds"),
        [
            ("2026-11-22T10:00:00Z", T0),
            ("2026-11-22T10:00:00.5Z", T0 + 0.5),
            ("2026-11-22T10:00:01.123456789Z", T0 + 1.123456789),
            ("0001-01-01T00:00:00Z", None),
            ("garbage", None),
            (None, None),
        ],
    )
    def test_engine_times(self, stamp: str | None, seconds: float | None) -> None:
        parsed = parse_time(stamp)
        assert parsed == (None if seconds is None else pytest.approx(seconds))
