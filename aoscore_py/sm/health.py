"""Instance health as pure decisions: a state from container facts, crash counting, backoff.

No I/O and no clock: every function takes the time (`Facts.now`) and what the engine said, so
the unit tests drive it with a fake clock.

- State. A running container is `activating` until it has run a stability window (default 1 s)
  or, when its image has a healthcheck, until Docker calls it healthy; then `active`. Unhealthy,
  exited, dead or unable to start is `failed`; paused (stopped on purpose) is `inactive`.
- Crashes. The service manager restarts crashed containers itself (Docker's restart policy is
  `no`). Each exit it sees once is a crash, unless the container stopped because the node went
  down: the run began before the host booted, or ended before this service manager started
  (then it is started again at once and not counted). The counter lives in a `HealthRecord`
  the service manager persists, and applies to one target (version, image and item config): a
  new target starts from zero.
- Backoff. After crash n the next start waits min(10 s x 2^(n-1), 300 s); the item config's
  `runParameters` override it as far as AosCore's meaning maps (`Backoff.from_item`). AosCore
  waits `restartInterval` before each restart and stops restarting for good once `startBurst`
  restarts happened within `startInterval` of the first start. Here `restartInterval` is the
  base wait, `startBurst` the crashes waited out at the base before the doubling begins, and
  `startInterval` how long a run must last to reset the counter (default 10 minutes). The
  service manager never gives up for good; only an image that can never run here
  (notSupported and other permanent errors) is not retried until the target changes.
- Errors. `errorInfo` messages start with `StartFailure`, `CrashLoopBackOff` or `ErrImagePull`
  and carry the exit code and the last lines of the container's log.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

from ..errors import AosCode, RemoteError, Retry, classify_code
from ..nodes import InstanceSpec
from ..nodes.itemconfig import RunParameters
from ..protocol import ErrorInfo, InstanceState
from .types import ContainerInfo, item_config_digest

SETTLE_S = 1.0
BASE_S = 10.0
CAP_S = 300.0
RESET_AFTER_S = 600.0

START_FAILURE = "StartFailure"
CRASH_LOOP = "CrashLoopBackOff"
IMAGE_PULL = "ErrImagePull"

# Docker reports a never-started container with this zero time.
_NEVER = "0001-01-01T00:00:00Z"
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_ISO_DURATION = re.compile(
    r"P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?"
    r"(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


@dataclass(frozen=True)
class Backoff:
    """When to start a crashed instance again.

    Attributes:
        base_s: the wait after the first crash (AosCore `restartInterval`).
        cap_s: the longest wait.
        burst: how many crashes wait `base_s` before the doubling begins (`startBurst`).
        reset_after_s: a run at least this long resets the counter (`startInterval`).
    """

    base_s: float = BASE_S
    cap_s: float = CAP_S
    burst: int = 1
    reset_after_s: float = RESET_AFTER_S

    def delay(self, crashes: int) -> float:
        """Seconds from crash number `crashes` (1 for the first) to the next start."""
        doublings = min(max(0, crashes - max(1, self.burst)), 32)
        return min(self.base_s * 2**doublings, max(self.cap_s, self.base_s))

    @classmethod
    def from_run_parameters(cls, params: Mapping[str, Any] | None) -> Backoff:
        """The backoff an AosCore item config's `runParameters` asks for (keys are
        case-insensitive; durations as seconds, `10s`/`1m30s` or ISO 8601 `PT10S`).

        Raises:
            RemoteError: invalidArgument naming the field that cannot be read.
        """
        out = cls()
        fields = {str(k).lower(): v for k, v in (params or {}).items()}
        names = {"restartinterval": "base_s", "startinterval": "reset_after_s"}
        for field, attr in names.items():
            if fields.get(field) is not None:
                try:
                    seconds = parse_duration(fields[field])
                except ValueError as exc:
                    raise RemoteError(
                        f"runParameters.{field}: {exc}", code=AosCode.INVALID_ARGUMENT
                    ) from None
                out = replace(out, **{attr: seconds})
        burst = fields.get("startburst")
        if burst is not None:
            if isinstance(burst, bool) or not isinstance(burst, int) or burst < 0:
                raise RemoteError(
                    f"runParameters.startBurst: {burst!r} is not a count",
                    code=AosCode.INVALID_ARGUMENT,
                )
            out = replace(out, burst=max(1, burst))
        return out

    @classmethod
    def from_item(cls, run: RunParameters, default: Backoff | None = None) -> Backoff | None:
        """The backoff an item config's parsed `runParameters` ask for, each one given
        replacing that part of `default`; None when they name none (the default applies)."""
        if run == RunParameters():
            return None
        out = default or cls()
        if run.restart_interval is not None:
            out = replace(out, base_s=run.restart_interval)
        if run.start_burst is not None:
            out = replace(out, burst=max(1, run.start_burst))
        if run.start_interval is not None:
            out = replace(out, reset_after_s=run.start_interval)
        return out


def parse_duration(value: object) -> float:
    """Seconds from a number, a Go duration (`1m30s`, `500ms`) or an ISO 8601 one (`PT1M30S`).

    Raises:
        ValueError: anything else, or a negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        seconds = _parse_text_duration(text)
    else:
        raise ValueError(f"{value!r} is not a duration")
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"{value!r} is not a duration")
    return seconds


def _parse_text_duration(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    iso = _ISO_DURATION.fullmatch(text.upper())
    if iso and text.upper() not in ("P", "PT") and any(iso.groupdict().values()):
        parts = {k: float(v) for k, v in iso.groupdict().items() if v}
        return (
            parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
        ) + parts.get("s", 0)
    pieces = _GO_DURATION.findall(text)
    if pieces and "".join(n + u for n, u in pieces) == text:
        return sum(float(n) * _GO_UNITS[u] for n, u in pieces)
    raise ValueError(f"{text!r} is not a duration")


@dataclass(frozen=True)
class Facts:
    """What the decisions need besides the container: the time and two boot times.

    Attributes:
        now: wall-clock seconds.
        settle_s: the stability window.
        sm_started: when this service manager started; an exit before it is not counted.
        host_boot: when the host booted; a run begun before it ended with the reboot.
    """

    now: float
    settle_s: float = SETTLE_S
    sm_started: float = 0.0
    host_boot: float = 0.0


@dataclass(frozen=True)
class HealthRecord:
    """One instance's crash history for one target, as the service manager persists it.

    Attributes:
        target: the version and image the counter applies to (`target_of`).
        crashes: crashes counted since the last healthy stretch.
        last_exit: the identity of the last exit counted or excused (`exit_identity`).
        next_start_at: wall-clock time before which the instance is not started again.
        permanent: the failure cannot go away by itself; not retried for this target.
        reason: StartFailure, CrashLoopBackOff or ErrImagePull; empty while healthy.
        aos_code: the errorInfo's aosCode.
        exit_code: the container's exit code.
        detail: the rest of the message (the engine's error, the last lines of the log).
    """

    target: str = ""
    crashes: int = 0
    last_exit: str = ""
    next_start_at: float = 0.0
    permanent: bool = False
    reason: str = ""
    aos_code: int = 0
    exit_code: int = 0
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HealthRecord:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def target_of(spec: InstanceSpec) -> str:
    """What a record's counter applies to: the version, the image and the item config (new
    quotas may cure a crash loop, so they start from zero too)."""
    target = f"{spec.version}@{spec.image.config_digest}"
    item_config = item_config_digest(spec.image.manifest)
    return f"{target}+{item_config}" if item_config else target


def record_for(record: HealthRecord | None, target: str) -> HealthRecord:
    """The record for `target`: the stored one if it is for that target, else a fresh one."""
    if record is None or record.target != target:
        return HealthRecord(target=target)
    return record


def parse_time(stamp: str | None) -> float | None:
    """Seconds since the epoch from the engine's RFC 3339 stamp (nanoseconds allowed)."""
    if not stamp or stamp == _NEVER:
        return None
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    try:
        moment = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
    digits = "".join(c for c in fraction if c.isdigit())
    return moment + (float(f"0.{digits}") if digits else 0.0)


def running_for(info: ContainerInfo, now: float) -> float | None:
    """Seconds since the container last started."""
    started = parse_time(info.started_at)
    return None if started is None else now - started


def _stopped(info: ContainerInfo) -> bool:
    """Exited, dead, or created but refused by the engine: the process is not running."""
    return info.status in ("exited", "dead") or (info.status == "created" and bool(info.error))


def exit_identity(info: ContainerInfo) -> str | None:
    """Names one exit of one container, so that it is counted once; None if it runs."""
    if not _stopped(info):
        return None
    finished = info.finished_at if info.finished_at and info.finished_at != _NEVER else None
    return f"{info.id}/{finished or 'start-failed'}"


def counts_as_crash(info: ContainerInfo, facts: Facts) -> bool:
    """Whether a stop is a crash, not the node going down (a reboot is not counted)."""
    finished = parse_time(info.finished_at)
    started = parse_time(info.started_at)
    if finished is not None and finished < facts.sm_started:
        return False
    return not (started is not None and started < facts.host_boot)


def _tail(log_tail: str) -> str:
    lines = [line for line in log_tail.strip().splitlines() if line.strip()]
    text = " | ".join(lines[-5:])
    return text if len(text) <= 400 else "..." + text[-397:]


def observe(
    record: HealthRecord, info: ContainerInfo | None, backoff: Backoff, facts: Facts, log: str = ""
) -> HealthRecord:
    """The record after seeing the instance's container once more.

    A container that has run `reset_after_s` clears the counter. A stop not seen before is
    counted (with `log`, its last lines) unless the node went down; a stop already seen changes
    nothing. Call it with the log only when `exit_identity(info) != record.last_exit`.
    """
    if info is None:
        return record
    if info.status == "running":
        age = running_for(info, facts.now)
        healthy = info.health != "unhealthy"
        if record.reason and healthy and age is not None and age >= backoff.reset_after_s:
            return HealthRecord(target=record.target, last_exit=record.last_exit)
        return record
    identity = exit_identity(info)
    if identity is None or identity == record.last_exit:
        return record
    if not counts_as_crash(info, facts):
        return replace(record, last_exit=identity, next_start_at=facts.now)
    started, finished = parse_time(info.started_at), parse_time(info.finished_at)
    crashes = record.crashes
    if started is not None and finished is not None and finished - started >= backoff.reset_after_s:
        crashes = 0
    crashes += 1
    reason, detail = _exit_reason(info, crashes)
    start_at = (finished or facts.now) + backoff.delay(crashes)
    return _runtime_failure(record, info, identity, crashes, start_at, reason, detail, log)


def replacement_failed(
    record: HealthRecord, info: ContainerInfo, backoff: Backoff, facts: Facts, log: str = ""
) -> HealthRecord:
    """The record after a blue-green replacement failed and was rolled back: its failure is
    counted once (an exit `observe` already counted is not counted again), so the next try
    waits out the backoff while the old version serves."""
    identity = exit_identity(info) or f"{info.id}/unhealthy"
    if record.reason and identity == record.last_exit:
        return record
    crashes = record.crashes + 1
    if info.status == "running":
        reason, detail = CRASH_LOOP, "health check failing"
    else:
        reason, detail = _exit_reason(info, crashes)
    start_at = facts.now + backoff.delay(crashes)
    return _runtime_failure(record, info, identity, crashes, start_at, reason, detail, log)


def _exit_reason(info: ContainerInfo, crashes: int) -> tuple[str, str]:
    """Why a container that is not running counts as failed: it never started, or it exits."""
    code = info.exit_code or 0
    if info.error or parse_time(info.started_at) is None:
        return START_FAILURE, (
            f"container did not start (exit code {code}): {info.error or 'it never ran'}"
        )
    return CRASH_LOOP, f"container keeps exiting (exit code {code}, crash {crashes})"


def _runtime_failure(
    record: HealthRecord,
    info: ContainerInfo,
    identity: str,
    crashes: int,
    start_at: float,
    reason: str,
    detail: str,
    log: str,
) -> HealthRecord:
    """The record of a counted runtime failure, the tail of its log in the detail."""
    if log.strip():
        detail += f"; last log: {_tail(log)}"
    return HealthRecord(
        target=record.target,
        crashes=crashes,
        last_exit=identity,
        next_start_at=start_at,
        reason=reason,
        aos_code=int(AosCode.RUNTIME),
        exit_code=info.exit_code or 0,
        detail=detail,
    )


def start_failed(
    record: HealthRecord,
    container_id: str,
    message: str,
    exit_code: int,
    backoff: Backoff,
    facts: Facts,
) -> HealthRecord:
    """The record after the engine refused to create or start the container (StartFailure)."""
    crashes = record.crashes + 1
    code = f" (exit code {exit_code})" if exit_code else ""
    return HealthRecord(
        target=record.target,
        crashes=crashes,
        last_exit=f"{container_id}/start-failed",
        next_start_at=facts.now + backoff.delay(crashes),
        reason=START_FAILURE,
        aos_code=int(AosCode.RUNTIME),
        exit_code=exit_code,
        detail=f"container did not start{code}: {message}",
    )


def image_loaded(record: HealthRecord) -> HealthRecord:
    """The record once the image loaded: an earlier ErrImagePull is over."""
    if record.reason != IMAGE_PULL:
        return record
    return HealthRecord(target=record.target, last_exit=record.last_exit)


def image_failed(
    record: HealthRecord, code: int, message: str, backoff: Backoff, facts: Facts
) -> HealthRecord:
    """The record after the image could not be loaded (ErrImagePull); a permanent error (a
    wrong platform, a bad blob) is not retried for this target."""
    crashes = record.crashes + 1
    return replace(
        record,
        crashes=crashes,
        next_start_at=facts.now + backoff.delay(crashes),
        permanent=classify_code(code) == Retry.PERMANENT,
        reason=IMAGE_PULL,
        aos_code=code,
        exit_code=0,
        detail=message,
    )


def may_start(record: HealthRecord, facts: Facts) -> bool:
    """Whether the instance may be (re)started or (re)created now."""
    return not record.permanent and facts.now >= record.next_start_at


def container_state(info: ContainerInfo, facts: Facts) -> InstanceState:
    """The state a container's facts alone show (blue-green asks it of the new container)."""
    if info.status == "running":
        if info.health == "unhealthy":
            return InstanceState.FAILED
        if info.health == "healthy":
            return InstanceState.ACTIVE
        if info.health == "starting":
            return InstanceState.ACTIVATING
        age = running_for(info, facts.now)
        settling = age is not None and age < facts.settle_s
        return InstanceState.ACTIVATING if settling else InstanceState.ACTIVE
    if info.status == "paused":
        return InstanceState.INACTIVE
    if info.status == "created" and not info.error:
        return InstanceState.ACTIVATING
    return InstanceState.FAILED


def error_info(record: HealthRecord, facts: Facts, serving: str | None = None) -> ErrorInfo:
    """The errorInfo of a failed instance from its record.

    Args:
        record: the instance's record (its reason set).
        facts: the time, for the wait until the next start.
        serving: the version that keeps serving when a replacement failed.
    """
    message = f"{record.reason or START_FAILURE}: {record.detail}"
    if record.permanent:
        message += "; not retried for this version"
    elif record.next_start_at > facts.now:
        message += f"; next start in {math.ceil(record.next_start_at - facts.now)} s"
    if serving:
        message += f"; version {serving} keeps serving"
    return ErrorInfo(record.aos_code or int(AosCode.RUNTIME), record.exit_code, message)


def instance_state(
    info: ContainerInfo | None,
    record: HealthRecord | None,
    facts: Facts,
    serving: str | None = None,
) -> tuple[InstanceState, ErrorInfo | None]:
    """An instance's state and error from its current container (the one of the wanted version)
    and its record.

    Args:
        info: the container of the wanted version; None when there is none (not created yet,
            or removed after a failed replacement).
        record: the instance's health record for the wanted target.
        facts: the time and the stability window.
        serving: the version of an older container still serving, if any.
    """
    record = record or HealthRecord()
    if info is None:
        if record.reason:
            return InstanceState.FAILED, error_info(record, facts, serving)
        if serving:
            return InstanceState.ACTIVATING, None
        return InstanceState.FAILED, ErrorInfo(
            int(AosCode.NOT_FOUND), 0, "container not found; the service manager creates it"
        )
    state = container_state(info, facts)
    if state == InstanceState.FAILED:
        if info.status == "running":  # unhealthy
            return state, ErrorInfo(int(AosCode.FAILED), 0, "health check failing")
        if record.reason and record.last_exit == exit_identity(info):
            return state, error_info(record, facts, serving)
        if not counts_as_crash(info, facts):
            return InstanceState.ACTIVATING, None  # the node went down: started again at once
        code = info.exit_code or 0
        if info.error or parse_time(info.started_at) is None:
            reason = START_FAILURE
            detail = f"container did not start (exit code {code}): {info.error or 'it never ran'}"
        else:
            reason, detail = CRASH_LOOP, f"container keeps exiting (exit code {code})"
        seen = HealthRecord(
            reason=reason, aos_code=int(AosCode.RUNTIME), exit_code=code, detail=detail
        )
        return state, error_info(seen, facts, serving)
    if state == InstanceState.ACTIVATING and info.status == "running" and record.reason:
        # Started again after a crash and not yet stable: still failing, not activating.
        return InstanceState.FAILED, error_info(record, facts, serving)
    return state, None


def next_due(
    info: ContainerInfo | None, record: HealthRecord, backoff: Backoff, facts: Facts
) -> float | None:
    """The next time this instance's state changes without an engine event: the end of its
    stability window, of its backoff, or of the healthy run that clears its counter."""
    times: list[float] = []
    if info is not None and info.status == "running":
        started = parse_time(info.started_at)
        if started is not None:
            if info.health is None and started + facts.settle_s > facts.now:
                times.append(started + facts.settle_s)
            if record.reason:
                times.append(started + backoff.reset_after_s)
    elif not record.permanent:
        times.append(record.next_start_at)
    future = [t for t in times if t > facts.now]
    return min(future) if future else None
