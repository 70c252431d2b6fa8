"""The SM's side of the SM link without sockets or an engine: the link's own decisions
(addresses, reconnect delays, how an ended stream reads, blob errors), the node's pure core
(UpdateInstances -> specs and failures, what to report and alert, SMInfo), and `SmNode` driven
with a fake manager, a fake blob cache and a recording link."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest

from aoscore_py.backoff import Backoff
from aoscore_py.errors import AosCode, AosError, BlobError, ConfigError, ProtocolError
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus, wire
from aoscore_py.nodes.proto import common_pb2, sm_pb2
from aoscore_py.protocol import ErrorInfo, InstanceState
from aoscore_py.sm.link import (
    CHANNEL_OPTIONS,
    Reconnect,
    SmLink,
    blob_error,
    describe_end,
    parse_target,
)
from aoscore_py.sm.service import (
    Meta,
    NodeResources,
    Reporter,
    SmConfig,
    SmNode,
    alert_worthy,
    answer_for,
    compose,
    countdown,
    fingerprint,
    plan_update,
    refused_answer,
    sm_info_message,
    steady,
)
from aoscore_py.sm.types import Platform

NODE = "node-1"
ACTIVE, ACTIVATING, FAILED = InstanceState.ACTIVE, InstanceState.ACTIVATING, InstanceState.FAILED


def key(item: str) -> InstanceKey:
    return InstanceKey(item, "s", 0)


def digest(item: str) -> str:
    return "sha256:" + (item.encode().hex() * 64)[:64]


def layout(item: str) -> ImageLayout:
    return ImageLayout(digest(item), digest(item), {}, "sha256:" + "c" * 64, ())


def request(item: str, version: str = "1.0", runtime: str = "docker") -> wire.InstanceRequest:
    return wire.InstanceRequest(key(item), "service", version, digest(item), runtime)


def spec(item: str, version: str = "1.0") -> InstanceSpec:
    return InstanceSpec(key(item), "service", version, layout(item))


def status(
    item: str, state: InstanceState = ACTIVE, version: str = "1.0", message: str | None = None
) -> InstanceStatus:
    error = ErrorInfo(int(AosCode.RUNTIME), 3, message) if message is not None else None
    return InstanceStatus(key(item), version, NODE, state, error)


# -- the link's decisions ------------------------------------------------------------------------


class TestTarget:
    @pytest.mark.parametrize(
        ("address", "host", "port"),
        [("127.0.0.1:8090", "127.0.0.1", 8090), ("[::1]:1", "[::1]", 1), ("cm:65535", "cm", 65535)],
    )
    def test_host_and_port(self, address: str, host: str, port: int) -> None:
        assert parse_target(address) == (host, port)

    @pytest.mark.parametrize("address", ["cm", "cm:", ":80", "cm:0", "cm:65536", "cm:http"])
    def test_anything_else_is_a_config_error(self, address: str) -> None:
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_target(address)

    def test_keepalive_is_the_documented_one(self) -> None:
        options = dict(CHANNEL_OPTIONS)
        assert options["grpc.keepalive_time_ms"] == 20_000
        assert options["grpc.keepalive_timeout_ms"] == 10_000
        assert options["grpc.keepalive_permit_without_calls"] == 1
        assert options["grpc.http2.max_pings_without_data"] == 0  # pings go on while idle


class TestReconnect:
    def schedule(self) -> Reconnect:
        return Reconnect(Backoff(1.0, 2.0, cap=15.0, jitter=0.0, rng=random.Random(1)), 30.0)

    def test_failed_attempts_back_off_to_the_cap(self) -> None:
        reconnect = self.schedule()
        assert [reconnect.delay(None) for _ in range(6)] == [1, 2, 4, 8, 15, 15]

    def test_a_stream_that_dropped_at_once_does_not_reset_the_backoff(self) -> None:
        reconnect = self.schedule()
        reconnect.delay(None)
        reconnect.delay(None)
        assert reconnect.delay(0.2) == 4  # a CM that takes each stream and drops it

    def test_a_stream_that_held_starts_again_from_the_beginning(self) -> None:
        reconnect = self.schedule()
        for _ in range(4):
            reconnect.delay(None)
        assert reconnect.delay(30.0) == 1


class TestStreamEnd:
    @pytest.mark.parametrize(
        ("code", "details", "level", "event", "says"),
        [
            (
                grpc.StatusCode.ABORTED,
                "replaced by a newer stream of node node-1 from ipv4:127.0.0.1:5",
                "warning",
                "link.replaced",
                "two SMs with one node id",
            ),
            (grpc.StatusCode.ABORTED, "stream ended", "warning", "link.aborted", "stream ended"),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "SMInfo.node_id: is empty",
                "error",
                "link.refused",
                "refused this SM's messages: SMInfo.node_id",
            ),
            (
                grpc.StatusCode.PERMISSION_DENIED,
                "SMInfo.node_id 'n1' is not the client certificate's common name 'n2'",
                "error",
                "link.refused",
                "check --node-id",
            ),
            (grpc.StatusCode.UNAVAILABLE, "the CM is stopping", "info", "link.cm_stopping", ""),
            (
                grpc.StatusCode.UNAVAILABLE,
                "failed to connect to all addresses; Ssl handshake failed",
                "error",
                "link.tls_failed",
                "--ca/--cert/--key",
            ),
            (
                grpc.StatusCode.UNAVAILABLE,
                "failed to connect to all addresses; Connection refused",
                "warning",
                "link.unreachable",
                "Connection refused",
            ),
            (grpc.StatusCode.OK, "", "info", "link.closed", "the CM ended the stream"),
            (grpc.StatusCode.INTERNAL, "boom", "warning", "link.down", "INTERNAL"),
        ],
    )
    def test_each_end_reads_clearly(
        self, code: grpc.StatusCode, details: str, level: str, event: str, says: str
    ) -> None:
        end = describe_end(code, details)
        assert (end.level, end.event) == (level, event)
        assert says in end.why

    def test_an_end_without_a_status_names_the_error(self) -> None:
        end = describe_end(None, "", "RuntimeError: the engine went away")
        assert end.event == "link.down" and "the engine went away" in end.why


class TestBlobError:
    @pytest.mark.parametrize(
        ("code", "aos_code"),
        [
            (grpc.StatusCode.NOT_FOUND, AosCode.NOT_FOUND),
            (grpc.StatusCode.INVALID_ARGUMENT, AosCode.INVALID_ARGUMENT),
            (grpc.StatusCode.UNAVAILABLE, AosCode.FAILED),
            (None, AosCode.FAILED),
        ],
    )
    def test_codes(self, code: grpc.StatusCode | None, aos_code: AosCode) -> None:
        error = blob_error(code, "blob sha256:ab is not in the store", ["sha256:ab"])
        assert isinstance(error, BlobError) and error.code == aos_code
        assert "sha256:ab" in error.message

    async def test_no_stream_no_urls(self) -> None:
        link = SmLink("127.0.0.1:9")
        with pytest.raises(BlobError, match="not connected") as caught:
            await link.get_blobs_infos([digest("a")])
        assert caught.value.code == AosCode.FAILED

    def test_nothing_is_queued_without_a_stream(self) -> None:
        assert not SmLink("127.0.0.1:9").send(wire.node_instances_status([]))


class TestConfig:
    def test_plaintext_only_on_loopback(self, tmp_path) -> None:
        SmConfig(NODE, "127.0.0.1:1", tmp_path, insecure=True).check()
        SmConfig(NODE, "localhost:1", tmp_path, insecure=True).check()
        with pytest.raises(ConfigError, match=r"--cm 192\.0\.2\.1:1.*loopback"):
            SmConfig(NODE, "192.0.2.1:1", tmp_path, insecure=True).check()

    def test_tls_files_are_needed_without_insecure(self, tmp_path) -> None:
        with pytest.raises(ConfigError, match="--ca/--cert/--key"):
            SmConfig(NODE, "cm:1", tmp_path).check()


# -- UpdateInstances -> what to run --------------------------------------------------------------


class TestPlanUpdate:
    def test_every_fetched_image_becomes_a_spec_in_order(self) -> None:
        plan = plan_update(
            NODE,
            [request("b"), request("a")],
            {digest("a"): layout("a"), digest("b"): layout("b")},
            {},
        )
        assert plan.specs == (spec("b"), spec("a"))
        assert plan.order == (key("b"), key("a"))
        assert plan.failed == {} and not plan.transient
        assert plan.meta[key("a")] == Meta("service", digest("a"))

    def test_an_image_that_cannot_be_fetched_fails_its_instance_only(self) -> None:
        missing = BlobError("blob x is not held", code=AosCode.NOT_FOUND)
        plan = plan_update(
            NODE, [request("a"), request("b")], {digest("a"): layout("a"), digest("b"): missing}, {}
        )
        assert plan.specs == (spec("a"),)
        failed = plan.failed[key("b")]
        assert failed.state == FAILED and failed.version == "1.0"
        assert failed.error == ErrorInfo(
            int(AosCode.NOT_FOUND), 0, "ErrImagePull: blob x is not held"
        )
        assert plan.transient  # notFound may go away: the CM may hold it later

    def test_a_bad_blob_is_not_worth_a_retry(self) -> None:
        bad = BlobError("digest mismatch", code=AosCode.INVALID_CHECKSUM)
        plan = plan_update(NODE, [request("a")], {digest("a"): bad}, {})
        assert not plan.transient and key("a") in plan.failed

    def test_what_ran_before_keeps_running_when_the_new_image_fails(self) -> None:
        down = BlobError("the CM's blob server is away")
        plan = plan_update(NODE, [request("a", "2.0")], {digest("a"): down}, {key("a"): spec("a")})
        assert plan.specs == (spec("a", "1.0"),)
        assert plan.failed[key("a")].version == "2.0"

    def test_a_runtime_this_node_lacks_is_not_supported(self) -> None:
        plan = plan_update(
            NODE,
            [request("a", runtime="crun"), request("b", runtime="")],
            {digest("b"): layout("b")},
            {},
        )
        error = plan.failed[key("a")].error
        assert error is not None and error.aos_code == AosCode.NOT_SUPPORTED
        assert "crun" in error.message and not plan.transient
        assert plan.specs == (spec("b"),)  # an empty runtime id is the default, docker

    def test_a_key_named_twice_counts_once(self) -> None:
        plan = plan_update(
            NODE, [request("a"), request("a", "2.0")], {digest("a"): layout("a")}, {}
        )
        assert plan.specs == (spec("a"),) and plan.order == (key("a"),)


class TestCompose:
    def test_failures_replace_what_the_manager_says(self) -> None:
        failed = status("a", FAILED, "2.0", "ErrImagePull: gone")
        assert compose([status("b"), status("a")], {key("a"): failed}) == [failed, status("b")]

    def test_the_answer_follows_the_cms_order_and_fills_gaps(self) -> None:
        reports = [status("a"), status("b")]
        answer = answer_for(reports, [key("b"), key("z"), key("a")], NODE)
        assert [s.key for s in answer] == [key("b"), key("z"), key("a")]
        assert answer[1].state == FAILED and answer[1].error is not None

    def test_a_refused_update_answers_every_readable_instance_failed(self) -> None:
        update = wire.update_instances([spec("a"), spec("b")], []).update_instances
        update.start_instances[1].instance.item_id = ""
        error = ProtocolError("UpdateInstances.start_instances[1].instance.item_id", "is empty")
        [answer] = refused_answer(update, NODE, error)
        assert answer.key == key("a") and answer.state == FAILED
        assert answer.error is not None and "item_id" in answer.error.message


# -- what to report and alert --------------------------------------------------------------------

CRASH = "CrashLoopBackOff: container keeps exiting (exit code 3, crash 1); last log: bye"


class TestReporting:
    def test_the_countdown_is_no_news(self) -> None:
        assert steady(f"{CRASH}; next start in 7 s") == CRASH
        assert countdown(f"{CRASH}; next start in 7 s") == 7
        assert countdown(CRASH) is None
        meta = {key("a"): Meta()}
        before = [status("a", FAILED, message=f"{CRASH}; next start in 9 s")]
        after = [status("a", FAILED, message=f"{CRASH}; next start in 8 s")]
        assert fingerprint(before, meta) == fingerprint(after, meta)
        assert fingerprint(before, meta) != fingerprint([status("a", ACTIVE)], meta)

    def test_a_new_manifest_is_news(self) -> None:
        statuses = [status("a")]
        assert fingerprint(statuses, {key("a"): Meta("service", digest("a"))}) != fingerprint(
            statuses, {key("a"): Meta("service", digest("b"))}
        )

    @pytest.mark.parametrize(
        ("before", "now", "worthy"),
        [
            (None, status("a", FAILED, message=CRASH), True),
            (
                status("a", ACTIVE),
                status("a", FAILED, message=f"{CRASH}; next start in 10 s"),
                True,
            ),
            (
                status("a", FAILED, message=f"{CRASH}; next start in 10 s"),
                status("a", FAILED, message=f"{CRASH}; next start in 9 s"),
                False,
            ),
            (  # started again, failed again: a new backoff
                status("a", FAILED, message=f"{CRASH}; next start in 1 s"),
                status("a", FAILED, message=f"{CRASH}; next start in 20 s"),
                True,
            ),
            (  # the countdown appears again after the restart: a new crash
                status("a", FAILED, message=CRASH),
                status("a", FAILED, message=f"{CRASH}; next start in 20 s"),
                True,
            ),
            (
                status("a", FAILED, message=CRASH),
                status("a", FAILED, message=CRASH.replace("crash 1", "crash 2")),
                True,
            ),
            (status("a", FAILED, message=CRASH), status("a", FAILED, "2.0", CRASH), True),
            (None, status("a", FAILED, message="container not found; the SM creates it"), False),
            (None, status("a", FAILED, message="health check failing"), False),
            (None, status("a", ACTIVE), False),
            (None, status("a", FAILED, message="ErrImagePull: blob gone"), True),
            (None, status("a", FAILED, message="StartFailure: no such runtime"), True),
        ],
    )
    def test_alerts(self, before, now, worthy: bool) -> None:
        assert alert_worthy(before, now) is worthy

    def test_the_reporter_remembers_what_was_sent_and_seen(self) -> None:
        reporter, meta = Reporter(), {key("a"): Meta()}
        failing = [status("a", FAILED, message=CRASH)]
        assert reporter.changed(failing, meta)
        reporter.mark_sent(failing, meta)
        assert not reporter.changed(failing, meta)
        assert reporter.alerts(failing) == failing
        assert reporter.alerts(failing) == []


class TestSmInfo:
    def test_one_docker_runtime_with_the_nodes_platform_and_resources(self) -> None:
        resources = NodeResources(8 << 30, 6 << 30, 10_000, 8_000, 20)
        message = sm_info_message(NODE, Platform("linux", "arm", "v7"), resources, "6.1.0")
        info = wire.node_runtimes(message.sm_info)
        assert info.node_id == NODE and info.resources == ()
        [runtime] = info.runtimes
        assert (runtime.identity.key, runtime.runtime_type) == ("docker", "docker")
        assert runtime.arch_info is not None and runtime.os_info is not None
        assert (runtime.arch_info.architecture, runtime.arch_info.variant) == ("arm", "v7")
        assert (runtime.os_info.os, runtime.os_info.version) == ("linux", "6.1.0")
        assert (runtime.total_ram, runtime.allowed_ram) == (8 << 30, 6 << 30)
        assert (runtime.max_dmips, runtime.allowed_dmips, runtime.max_instances) == (
            10_000,
            8_000,
            20,
        )

    def test_what_is_not_known_is_not_sent(self) -> None:
        message = sm_info_message(NODE, Platform("linux", "amd64"), NodeResources())
        runtime = message.sm_info.runtimes[0]
        assert (runtime.total_ram, runtime.max_dmips, runtime.max_instances) == (0, 0, 0)
        assert runtime.arch_info.variant == ""


# -- SmNode with fakes ---------------------------------------------------------------------------


class FakeManager:
    """Runs what it is given at once (activating); a test sets states and errors."""

    def __init__(self, statuses: Sequence[InstanceStatus] = ()) -> None:
        self.statuses = {s.key: s for s in statuses}
        self.runs: list[list[InstanceSpec]] = []
        self.fail: Exception | None = None

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        if self.fail is not None:
            raise self.fail
        self.runs.append(list(specs))
        old = self.statuses
        self.statuses = {
            s.key: old[s.key]
            if s.key in old and old[s.key].version == s.version
            else InstanceStatus(s.key, s.version, NODE, ACTIVATING)
            for s in specs
        }
        return await self.instance_statuses()

    async def instance_statuses(self) -> list[InstanceStatus]:
        return [self.statuses[k] for k in sorted(self.statuses)]

    async def collect_images(self, keep: Sequence[str]) -> list[str]:
        return []


class FakeImages:
    """Layouts by manifest digest; a digest in `errors` raises that error."""

    def __init__(self) -> None:
        self.errors: dict[str, AosError] = {}
        self.asked: list[str] = []
        self.kept: list[list[str]] = []

    async def ensure(self, manifest_digest: str) -> ImageLayout:
        self.asked.append(manifest_digest)
        if manifest_digest in self.errors:
            raise self.errors[manifest_digest]
        item = next(i for i in "abcdefgh" if digest(i) == manifest_digest)
        return layout(item)

    def collect(self, keep_digests: Sequence[str]) -> list[str]:
        self.kept.append(list(keep_digests))
        return []


class RecordingLink:
    """The link's `send`: records what goes on stream `stream` (None: no stream open)."""

    def __init__(self) -> None:
        self.stream: int | None = 1
        self.sent: list[tuple[int, sm_pb2.SMOutgoingMessages]] = []

    def send(self, message: sm_pb2.SMOutgoingMessages, *, stream: int | None = None) -> bool:
        if self.stream is None or (stream is not None and stream != self.stream):
            return False
        self.sent.append((self.stream, message))
        return True

    def cases(self) -> list[str]:
        return [m.WhichOneof("SMOutgoingMessage") or "" for _, m in self.sent]

    def last(self, case: str):
        """The last message of `case` sent; None if none was."""
        found = (getattr(m, case) for _, m in reversed(self.sent) if m.HasField(case))
        return next(found, None)


class Harness:
    def __init__(self, manager: FakeManager, images: FakeImages, link: RecordingLink) -> None:
        self.manager, self.images, self.link = manager, images, link
        info = sm_info_message(NODE, Platform("linux", "amd64"), NodeResources())
        self.node = SmNode(
            NODE,
            manager,
            images,
            info,
            poll_s=0.01,
            retry=Backoff(0.02, cap=0.05, jitter=0.0),
        )
        self.node.link = link

    def update(self, *specs: InstanceSpec, stream: int = 1) -> None:
        self.node.received(wire.update_instances(specs, []), stream)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                await asyncio.sleep(0.005)

    async def answered(self, count: int = 1) -> sm_pb2.UpdateInstancesStatus:
        await self.until(lambda: self.link.cases().count("update_instances_status") >= count)
        return self.link.last("update_instances_status")


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    made = Harness(FakeManager(), FakeImages(), RecordingLink())
    await made.node.hello()  # as the link does on each new stream
    task = asyncio.create_task(made.node.serve())
    yield made
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def states(message) -> dict[InstanceKey, str]:
    return {wire.instance_key(s.instance): s.state for s in message.instances}


def reported(harness: Harness) -> dict[InstanceKey, str]:
    """What the last NodeInstancesStatus said."""
    message = harness.link.last("node_instances_status")
    return {} if message is None else states(message)


class TestSmNode:
    async def test_hello_is_sm_info_then_every_instance(self) -> None:
        manager = FakeManager([status("a"), status("b", FAILED, message=CRASH)])
        previous = {key("a"): spec("a")}
        info = sm_info_message(NODE, Platform("linux", "amd64"), NodeResources())
        node = SmNode(NODE, manager, FakeImages(), info, previous=previous)
        first, second = await node.hello()
        assert first.WhichOneof("SMOutgoingMessage") == "sm_info"
        assert second.WhichOneof("SMOutgoingMessage") == "node_instances_status"
        reported = second.node_instances_status.instances
        assert states(second.node_instances_status) == {key("a"): "active", key("b"): "failed"}
        # The manifest of an instance from before the restart comes from the state file.
        assert [s.manifest_digest for s in reported] == [digest("a"), ""]

    async def test_an_update_runs_exactly_the_start_list_and_is_answered(self, harness) -> None:
        harness.update(spec("a"), spec("b"))
        answer = await harness.answered()
        assert states(answer) == {key("a"): "activating", key("b"): "activating"}
        assert [s.manifest_digest for s in answer.instances] == [digest("a"), digest("b")]
        assert harness.manager.runs == [[spec("a"), spec("b")]]
        assert sorted(harness.images.asked) == [digest("a"), digest("b")]
        assert harness.images.kept and set(harness.images.kept[-1]) == {digest("a"), digest("b")}

    async def test_changes_are_reported_once_and_the_countdown_is_not(self, harness) -> None:
        harness.update(spec("a"))
        await harness.answered()
        sent = len(harness.link.sent)
        await asyncio.sleep(0.05)
        assert len(harness.link.sent) == sent  # nothing changed since the answer
        harness.manager.statuses[key("a")] = status("a")
        await harness.until(lambda: "node_instances_status" in harness.link.cases()[sent:])
        assert states(harness.link.last("node_instances_status")) == {key("a"): "active"}
        sent = len(harness.link.sent)
        for left in (10, 9, 8):
            harness.manager.statuses[key("a")] = status(
                "a", FAILED, message=f"{CRASH}; next start in {left} s"
            )
            await asyncio.sleep(0.03)
        assert harness.link.cases()[sent:] == ["node_instances_status", "alert"]
        alert = harness.link.last("alert").instance_alert
        assert wire.instance_key(alert.instance) == key("a")
        assert alert.service_version == "1.0" and alert.message.startswith("CrashLoopBackOff")

    async def test_an_instance_without_its_image_fails_and_is_fetched_again(self, harness) -> None:
        harness.images.errors[digest("b")] = BlobError("the CM's blob server is away")
        harness.update(spec("a"), spec("b"))
        answer = await harness.answered()
        assert states(answer) == {key("a"): "activating", key("b"): "failed"}
        error = answer.instances[1].error
        assert error.aos_code == AosCode.FAILED and error.message.startswith("ErrImagePull")
        assert harness.manager.runs == [[spec("a")]]
        await harness.until(lambda: harness.images.asked.count(digest("b")) >= 2)
        del harness.images.errors[digest("b")]
        await harness.until(lambda: harness.manager.runs[-1] == [spec("a"), spec("b")])
        await harness.until(lambda: reported(harness).get(key("b")) == "activating")
        assert harness.link.cases().count("update_instances_status") == 1  # a retry answers none

    async def test_a_permanent_failure_is_not_fetched_again(self, harness) -> None:
        harness.images.errors[digest("a")] = BlobError("mismatch", code=AosCode.INVALID_CHECKSUM)
        harness.update(spec("a"))
        await harness.answered()
        await asyncio.sleep(0.1)
        assert harness.images.asked == [digest("a")]

    async def test_an_unreadable_update_changes_nothing(self, harness) -> None:
        update = wire.update_instances([spec("a")], [])
        update.update_instances.start_instances[0].manifest_digest = ""
        harness.node.received(update, 1)
        answer = await harness.answered()
        assert states(answer) == {key("a"): "failed"}
        assert "manifest_digest" in answer.instances[0].error.message
        assert harness.manager.runs == []

    async def test_an_engine_failure_answers_every_instance_failed(self, harness) -> None:
        harness.manager.fail = AosError("the engine is away", code=AosCode.RUNTIME)
        harness.update(spec("a"))
        answer = await harness.answered()
        assert states(answer) == {key("a"): "failed"}
        assert answer.instances[0].error.message == "the engine is away"
        harness.manager.fail = None
        await harness.until(lambda: harness.manager.runs == [[spec("a")]])  # tried again

    async def test_an_answer_stays_on_the_stream_of_its_request(self, harness) -> None:
        harness.link.stream = 2  # stream 1 ended and another opened meanwhile
        harness.update(spec("a"), stream=1)
        await harness.until(lambda: harness.node.applied == 1)
        assert "update_instances_status" not in harness.link.cases()
        assert harness.manager.runs == [[spec("a")]]

    async def test_the_item_type_asked_for_is_reported(self, harness) -> None:
        component = InstanceSpec(key("a"), "component", "1.0", layout("a"))
        harness.update(component)
        answer = await harness.answered()
        assert answer.instances[0].instance.type == common_pb2.COMPONENT

    async def test_node_config_requests_are_answered(self, harness) -> None:
        harness.node.received(
            sm_pb2.SMIncomingMessages(get_node_config_status=sm_pb2.GetNodeConfigStatus()), 1
        )
        harness.node.received(
            sm_pb2.SMIncomingMessages(
                check_node_config=sm_pb2.CheckNodeConfig(node_config="{}", version="1.0.0")
            ),
            1,
        )
        first, second = [m.node_config_status for _, m in harness.link.sent]
        assert (first.state, first.version) == ("absent", "")
        assert (second.state, second.version) == ("failed", "1.0.0")
        assert second.error.aos_code == AosCode.NOT_SUPPORTED

    async def test_messages_it_does_not_read_are_skipped(self, harness) -> None:
        harness.node.received(sm_pb2.SMIncomingMessages(), 1)
        harness.node.received(wire.connection_status(True), 1)
        assert harness.link.sent == []

    async def test_nothing_is_reported_while_no_stream_is_open(self, harness) -> None:
        harness.link.stream = None
        harness.manager.statuses[key("a")] = status("a")
        await asyncio.sleep(0.05)
        harness.link.stream = 1
        await harness.until(lambda: "node_instances_status" in harness.link.cases())
        assert states(harness.link.last("node_instances_status")) == {key("a"): "active"}
