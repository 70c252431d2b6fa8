"""What one UpdateInstances becomes, without engine or link: specs, failures, the answer."""

from __future__ import annotations

from aoscore_py.errors import AosCode, BlobError, ProtocolError
from aoscore_py.nodes import wire
from aoscore_py.protocol import ErrorInfo
from aoscore_py.sm.reporter import Meta
from aoscore_py.sm.updates import answer_for, plan_update, refused_answer

from .node_stubs import FAILED, NODE, digest, key, layout, request, spec, status


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

    def test_an_item_config_that_does_not_read_fails_with_invalid_argument(self) -> None:
        bad = ProtocolError("aosItemConfig sha256:ab", "$.quotas.ramLimit: expected >= 0")
        plan = plan_update(NODE, [request("a")], {digest("a"): bad}, {})
        error = plan.failed[key("a")].error
        assert error is not None and error.aos_code == AosCode.INVALID_ARGUMENT
        assert error.message == (
            "ErrImagePull: aosItemConfig sha256:ab: $.quotas.ramLimit: expected >= 0"
        )
        assert not plan.transient  # the same bytes will never read

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


class TestAnswer:
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
