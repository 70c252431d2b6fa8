"""Writing rules (key order, what is left out) and the small helpers around them."""

from __future__ import annotations

import typing
import uuid
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.protocol import (
    PROTOCOL_VERSION,
    Ack,
    AlertRule,
    AlertRules,
    BlobUrlInfo,
    BlobUrls,
    Certificate,
    DesiredInstance,
    DesiredItem,
    DesiredStatus,
    DesiredSubject,
    Envelope,
    ErrorInfo,
    Header,
    Identity,
    ItemState,
    ItemStatus,
    ItemType,
    Message,
    Nack,
    NodeConfig,
    NodeInfo,
    NodeState,
    PartitionAlertRule,
    RequestBlobUrls,
    SignInfo,
    SubjectType,
    UnitConfig,
    UnitStatus,
    UpdateState,
    dump_frame,
    dump_message,
    new_header,
    parse_frame,
    parse_message,
    to_json,
)

STAMP = datetime(2026, 5, 7, 5, 44, 11, 61622, tzinfo=UTC)
DIGEST = "sha256:" + "d" * 64


class TestMessageTypes:
    @pytest.mark.parametrize(
        ("cls", "name"),
        [
            (DesiredStatus, "desiredStatus"),
            (UnitStatus, "unitStatus"),
            (Ack, "ack"),
            (Nack, "nack"),
            (RequestBlobUrls, "requestBlobUrls"),
            (BlobUrls, "blobUrls"),
            (UpdateState, "updateState"),
        ],
    )
    def test_class_attribute(self, cls: type, name: str) -> None:
        assert name == cls.MESSAGE_TYPE  # type: ignore[attr-defined]
        assert cls in typing.get_args(Message)

    def test_values_are_frozen_and_hashable(self) -> None:
        node = NodeInfo(Identity(codename="n"), NodeState.PROVISIONED, True, attrs=(("a", "b"),))
        status = UnitStatus(nodes=(node,))
        assert hash(status) == hash(UnitStatus(nodes=(node,)))
        with pytest.raises(AttributeError):
            status.seq = 1  # type: ignore[misc]

    def test_identity_key(self) -> None:
        assert Identity(id="i", codename="c").key == "i"
        assert Identity(codename="c").key == "c"
        assert Identity().key == ""


class TestWriting:
    def test_correlation_id_left_out_when_empty(self) -> None:
        assert dump_message(Ack()) == b'{"messageType":"ack"}'
        assert dump_message(Ack(correlation_id="")) == b'{"messageType":"ack"}'

    def test_nack_always_has_retry_after_then_our_error_info(self) -> None:
        assert dump_message(Nack()) == b'{"messageType":"nack","retryAfter":500}'
        nack = Nack("c", 10, ErrorInfo(AosCode.INVALID_ARGUMENT, 0, "$.items: bad"))
        assert dump_message(nack) == (
            b'{"messageType":"nack","correlationId":"c","retryAfter":10,'
            b'"errorInfo":{"aosCode":6,"exitCode":0,"message":"$.items: bad"}}'
        )

    def test_unit_status_sections(self) -> None:
        assert dump_message(UnitStatus()) == b'{"messageType":"unitStatus","isDeltaInfo":false}'
        status = UnitStatus(
            is_delta_info=True,
            items=(ItemStatus(Identity(id="i", type=ItemType.SERVICE), "1", ItemState.PENDING),),
            subjects=(),
            boot_id="boot-1",
            seq=42,
        )
        assert dump_message(status) == (
            b'{"messageType":"unitStatus","isDeltaInfo":true,"items":[{"item":{"id":"i",'
            b'"type":"service"},"version":"1","state":"pending"}],"subjects":[],'
            b'"bootId":"boot-1","seq":42}'
        )
        assert parse_message(dump_message(status)) == status

    def test_identity_key_order(self) -> None:
        ident = Identity(title="t", type="node", codename="c", id="i")
        assert list(to_json(UpdateState(ident, ident, 0, "s"))["item"]) == [
            "id",
            "codename",
            "type",
            "title",
        ]

    def test_desired_status_as_the_cloud_sends_it(self) -> None:
        msg = DesiredStatus(
            correlation_id="c",
            items=(DesiredItem(Identity(id="i", type="layer"), "1", DIGEST),),
            instances=(DesiredInstance(Identity(id="i"), Identity(id="s")),),
            subjects=(DesiredSubject(Identity(id="s"), SubjectType.USER),),
            certificates=(Certificate(b"\0\1", "fp"),),
        )
        assert dump_message(msg) == (
            b'{"messageType":"desiredStatus","correlationId":"c",'
            b'"items":[{"item":{"id":"i","type":"layer"},"version":"1","indexDigest":"'
            + DIGEST.encode()
            + b'"}],'
            b'"instances":[{"item":{"id":"i"},"subject":{"id":"s"},"priority":0,'
            b'"numInstances":0,"labels":[]}],'
            b'"subjects":[{"identity":{"id":"s"},"type":"user","isReportedFromUnit":false}],'
            b'"certificates":[{"certificate":"AAE=","fingerprint":"fp"}]}'
        )
        assert parse_message(dump_message(msg)) == msg
        assert dump_message(DesiredStatus()) == b'{"messageType":"desiredStatus"}'

    def test_desired_status_seq_is_our_addition_and_optional(self) -> None:
        """The reference cloud orders a unit's desired statuses with `seq` (AosCore's cloud
        sends none): written last, read back, refused when negative."""
        assert dump_message(DesiredStatus(seq=5)) == b'{"messageType":"desiredStatus","seq":5}'
        assert parse_message(dump_message(DesiredStatus(seq=5))) == DesiredStatus(seq=5)
        assert parse_message(b'{"messageType":"desiredStatus"}') == DesiredStatus()
        with pytest.raises(ProtocolError) as raised:
            parse_message(b'{"messageType":"desiredStatus","seq":-1}')
        assert "$.seq" in str(raised.value)

    def test_alert_rule_timeouts_as_iso8601(self) -> None:
        rules = AlertRules(
            cpu=AlertRule(10.0, 1.0, 2.0),
            ram=AlertRule(0.0, 1.0, 2.0),
            partitions=(PartitionAlertRule("p", 1.5, 0.1, 0.2),),
        )
        node = NodeConfig(Identity(codename="n"), alert_rules=rules)
        out = to_json(UnitConfig("1", "1", (node,)))["nodes"][0]["alertRules"]
        assert out == {
            "cpu": {"minTimeout": "PT10S", "minThreshold": 1.0, "maxThreshold": 2.0},
            "ram": {"minThreshold": 1.0, "maxThreshold": 2.0},  # zero is left out, as AosCore
            "partitions": [
                {"name": "p", "minTimeout": "PT1.5S", "minThreshold": 0.1, "maxThreshold": 0.2}
            ],
        }

    def test_blob_urls(self) -> None:
        sign = SignInfo("chain", "RSA/SHA256", b"sig", datetime(2023, 10, 1, 12, tzinfo=UTC))
        blob = BlobUrlInfo(DIGEST, ("u1",), bytes.fromhex("ABCD"), 3, sign_info=sign)
        out = to_json(BlobUrls("c", (blob,)))["items"][0]
        assert out == {
            "digest": DIGEST,
            "urls": ["u1"],
            "sha256": "abcd",
            "size": 3,
            "signInfo": {
                "chainName": "chain",
                "alg": "RSA/SHA256",
                "value": "c2ln",
                "trustedTimestamp": "2023-10-01T12:00:00.000000Z",
            },
        }

    def test_to_json_refuses_other_objects(self) -> None:
        with pytest.raises(TypeError):
            to_json(object())  # type: ignore[arg-type]


class TestHeaders:
    def test_frame_key_order_and_timestamp_format(self) -> None:
        env = Envelope(Header(7, "unit-1", "t-1", STAMP), Ack())
        assert dump_frame(env) == (
            b'{"header":{"version":7,"systemId":"unit-1","createdAt":"2026-05-07T05:44:11.061622Z",'
            b'"txn":"t-1"},"data":{"messageType":"ack"}}'
        )
        assert parse_frame(dump_frame(env)) == env

    def test_created_at_written_in_utc(self) -> None:
        local = STAMP.astimezone(timezone(timedelta(hours=3)))
        out = orjson.loads(dump_frame(Envelope(Header(7, "u", "t", local), Ack())))
        assert out["header"]["createdAt"] == "2026-05-07T05:44:11.061622Z"
        whole = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
        out = orjson.loads(dump_frame(Envelope(Header(7, "u", "t", whole), Ack())))
        assert out["header"]["createdAt"] == "2026-01-02T03:04:05.000000Z"

    def test_created_at_left_out_when_unknown(self) -> None:
        assert b"createdAt" not in dump_frame(Envelope(Header(7, "u", "t"), Ack()))

    def test_new_header(self) -> None:
        head = new_header("unit-1")
        assert (head.version, head.system_id) == (PROTOCOL_VERSION, "unit-1")
        assert uuid.UUID(head.txn).version == 4
        assert head.created_at is not None
        assert head.created_at.utcoffset() == timedelta(0)
        assert abs(datetime.now(UTC) - head.created_at) < timedelta(minutes=1)
        assert new_header("u").txn != new_header("u").txn

    def test_new_header_with_given_values(self) -> None:
        naive = datetime(2026, 5, 7, 5, 44, 11)
        assert new_header("u", "t", naive) == Header(7, "u", "t", naive.replace(tzinfo=UTC))
        offset = datetime(2026, 5, 7, 8, 44, 11, tzinfo=timezone(timedelta(hours=3)))
        assert new_header("u", "t", offset).created_at == datetime(
            2026, 5, 7, 5, 44, 11, tzinfo=UTC
        )
