"""CloudSession: envelope checks, acks and resends, driven by bytes and a fake clock; and what
the link does with a dropped frame."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.cm.communication.session import (
    Acked,
    CloudSession,
    Dropped,
    GaveUp,
    Nacked,
    Received,
    Refused,
)
from aoscore_py.errors import AosCode
from aoscore_py.protocol import (
    PROTOCOL_VERSION,
    Ack,
    DesiredStatus,
    Envelope,
    ErrorInfo,
    Header,
    Message,
    Nack,
    RequestBlobUrls,
    UnitStatus,
    dump_frame,
    new_header,
    parse_frame,
)

UNIT = "unit-1"


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def session(clock: FakeClock) -> CloudSession:
    return CloudSession(UNIT, clock, ack_timeout=10.0, max_tries=3)


def from_cloud(message: Message, txn: str = "cloud-txn", *, system_id: str = UNIT) -> bytes:
    return dump_frame(Envelope(new_header(system_id, txn=txn), message))


def nack_of(refused: Refused) -> tuple[Envelope, Nack]:
    """The reply of a refusal, parsed as the cloud would parse it."""
    envelope = parse_frame(refused.reply)
    assert isinstance(envelope.data, Nack)
    assert envelope.header.version == PROTOCOL_VERSION
    assert envelope.header.system_id == UNIT
    assert envelope.data.error_info is not None
    return envelope, envelope.data


class TestSending:
    def test_a_sent_frame_carries_our_header_and_the_message(self, session: CloudSession) -> None:
        status = UnitStatus(correlation_id="c-1")
        txn, frame = session.send(status)
        envelope = parse_frame(frame)
        assert envelope.header.txn == txn
        assert envelope.header.system_id == UNIT
        assert envelope.header.version == PROTOCOL_VERSION
        assert envelope.data == status

    def test_each_message_gets_its_own_txn(self, session: CloudSession) -> None:
        txns = {session.send(UnitStatus())[0] for _ in range(5)}
        assert len(txns) == 5

    def test_ack_and_nack_reply_under_the_received_txn(self, session: CloudSession) -> None:
        assert parse_frame(session.ack("t-9")).header.txn == "t-9"
        nack = parse_frame(session.nack("t-9", ErrorInfo(6, 0, "why"), 1500))
        assert nack.header.txn == "t-9"
        assert nack.data == Nack(retry_after=1500, error_info=ErrorInfo(6, 0, "why"))
        assert session.pending_frames() == [], "replies expect no ack"


class TestAcks:
    def test_an_ack_clears_the_pending_message(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        txn, _ = session.send(UnitStatus())
        assert session.receive(from_cloud(Ack(), txn)) == Acked(txn)
        assert session.pending_frames() == []
        assert session.next_deadline() is None
        clock.advance(1000)
        assert session.due() == ([], [])

    def test_an_ack_clears_only_its_own_message(self, session: CloudSession) -> None:
        first, _ = session.send(UnitStatus())
        _, second_frame = session.send(UnitStatus())
        session.receive(from_cloud(Ack(), first))
        assert session.pending_frames() == [second_frame]

    def test_an_unknown_ack_is_harmless(self, session: CloudSession) -> None:
        _, frame = session.send(UnitStatus())
        assert session.receive(from_cloud(Ack(), "never-sent")) == Acked("never-sent")
        assert session.pending_frames() == [frame]


class TestResend:
    def test_nothing_is_resent_before_the_ack_timeout(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        session.send(UnitStatus())
        assert session.next_deadline() == clock.now + 10.0
        clock.advance(9.9)
        assert session.due() == ([], [])

    def test_the_same_frame_is_resent_after_the_timeout_then_given_up(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        txn, frame = session.send(UnitStatus())
        sends = 1
        for _ in range(2):
            clock.advance(10.0)
            resend, gave_up = session.due()
            # same bytes, same txn: the cloud can tell a resend from a new message
            assert resend == [frame]
            assert gave_up == []
            sends += 1
            assert session.due() == ([], []), "one resend per timeout"
        assert sends == session.max_tries
        clock.advance(10.0)
        assert session.due() == ([], [GaveUp(txn, "unitStatus")])
        assert session.pending_frames() == []
        clock.advance(100.0)
        assert session.due() == ([], [])

    def test_max_tries_one_means_no_resend(self, clock: FakeClock) -> None:
        session = CloudSession(UNIT, clock, ack_timeout=5.0, max_tries=1)
        txn, _ = session.send(RequestBlobUrls("c", ("sha256:" + "a" * 64,)))
        clock.advance(5.0)
        assert session.due() == ([], [GaveUp(txn, "requestBlobUrls")])

    def test_an_ack_after_a_resend_stops_further_resends(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        txn, _ = session.send(UnitStatus())
        clock.advance(10.0)
        assert len(session.due()[0]) == 1
        session.receive(from_cloud(Ack(), txn))
        clock.advance(100.0)
        assert session.due() == ([], [])


class TestNack:
    def test_a_nack_reports_its_delay_and_reason(self, session: CloudSession) -> None:
        txn, _ = session.send(UnitStatus())
        why = ErrorInfo(int(AosCode.WRONG_STATE), 0, "busy")
        event = session.receive(from_cloud(Nack(retry_after=2500, error_info=why), txn))
        assert event == Nacked(txn, 2.5, why)

    def test_a_short_retry_after_brings_the_resend_forward(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        txn, frame = session.send(UnitStatus())
        session.receive(from_cloud(Nack(retry_after=500), txn))
        clock.advance(0.4)
        assert session.due() == ([], [])
        clock.advance(0.1)
        assert session.due() == ([frame], [])

    def test_a_long_retry_after_holds_the_resend_past_the_ack_timeout(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        txn, frame = session.send(UnitStatus())
        session.receive(from_cloud(Nack(retry_after=25_000), txn))
        clock.advance(10.0)
        assert session.due() == ([], [])
        assert session.next_deadline() == pytest.approx(clock.now + 15.0)
        clock.advance(15.0)
        assert session.due() == ([frame], [])

    def test_nacked_sends_count_toward_max_tries(self, clock: FakeClock) -> None:
        session = CloudSession(UNIT, clock, ack_timeout=10.0, max_tries=2)
        txn, frame = session.send(UnitStatus())
        session.receive(from_cloud(Nack(retry_after=0), txn))
        assert session.due() == ([frame], [])
        session.receive(from_cloud(Nack(retry_after=0), txn))
        assert session.due() == ([], [GaveUp(txn, "unitStatus")])

    def test_a_nack_for_an_unknown_txn_changes_nothing(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        _, frame = session.send(UnitStatus())
        event = session.receive(from_cloud(Nack(retry_after=0), "other"))
        assert isinstance(event, Nacked)
        assert session.due() == ([], [])
        assert session.pending_frames() == [frame]


class TestReceive:
    def test_a_message_is_handed_over_with_its_txn(self, session: CloudSession) -> None:
        ds = DesiredStatus(correlation_id="ds-1")
        event = session.receive(from_cloud(ds, "t-42"))
        assert isinstance(event, Received)
        assert event.txn == "t-42"
        assert event.message == ds

    def test_text_frames_are_accepted(self, session: CloudSession) -> None:
        event = session.receive(from_cloud(DesiredStatus(), "t-1").decode())
        assert isinstance(event, Received)


class TestDropped:
    """PROTOCOL.md, "Header checks": another version or another unit is dropped, not nacked."""

    @pytest.mark.parametrize("version", [6, 8, 0])
    def test_another_protocol_version_is_dropped(self, session: CloudSession, version: int) -> None:
        header = Header(version=version, system_id=UNIT, txn="t-old")
        event = session.receive(dump_frame(Envelope(header, DesiredStatus())))
        assert isinstance(event, Dropped)  # no reply frame: a Dropped carries none
        assert (event.txn, event.seen) == ("t-old", version)
        assert event.error.path == "$.header.version"
        assert event.error.reason == (
            f"unsupported protocol version {version} (this unit speaks {PROTOCOL_VERSION})"
        )
        assert event.error.code == AosCode.NOT_SUPPORTED
        assert session.pending_frames() == []

    def test_a_newer_frame_that_does_not_parse_as_v7_is_dropped_for_its_version(
        self, session: CloudSession
    ) -> None:
        raw = orjson.dumps(
            {
                "header": {"version": 8, "systemId": "unit-2", "txn": "t-v8"},
                "data": {"messageType": "somethingNewInV8"},
            }
        )
        event = session.receive(raw)
        assert isinstance(event, Dropped)
        assert (event.txn, event.seen, event.error.path) == ("t-v8", 8, "$.header.version")

    def test_a_frame_for_another_unit_is_dropped(self, session: CloudSession) -> None:
        event = session.receive(from_cloud(DesiredStatus(), "t-x", system_id="unit-2"))
        assert isinstance(event, Dropped)
        assert (event.txn, event.seen) == ("t-x", "unit-2")
        assert event.error.path == "$.header.systemId"
        assert "unit-2" in event.error.reason
        assert UNIT in event.error.reason

    def test_a_bad_body_for_another_unit_is_dropped(self, session: CloudSession) -> None:
        raw = orjson.dumps(
            {
                "header": {"version": PROTOCOL_VERSION, "systemID": "unit-2", "txn": "t-y"},
                "data": {"messageType": "noSuchMessage"},
            }
        )
        event = session.receive(raw)
        assert isinstance(event, Dropped)
        assert (event.txn, event.seen, event.error.path) == ("t-y", "unit-2", "$.header.systemId")

    def test_an_ack_for_another_unit_does_not_clear_ours(self, session: CloudSession) -> None:
        txn, frame = session.send(UnitStatus())
        assert isinstance(session.receive(from_cloud(Ack(), txn, system_id="u2")), Dropped)
        assert session.pending_frames() == [frame]

    @pytest.mark.parametrize(
        ("header", "path"),
        [
            ({"version": "6", "systemId": UNIT, "txn": "t-z"}, "$.header.version"),
            ({"version": True, "systemId": UNIT, "txn": "t-z"}, "$.header.version"),
            ({"version": PROTOCOL_VERSION, "systemId": 2, "txn": "t-z"}, "$.header.systemId"),
        ],
        ids=["version-string", "version-bool", "system-id-number"],
    )
    def test_a_header_of_the_wrong_json_type_is_malformed_and_nacked(
        self, session: CloudSession, header: dict[str, object], path: str
    ) -> None:
        event = session.receive(orjson.dumps({"header": header, "data": {"messageType": "ack"}}))
        assert isinstance(event, Refused)
        assert (event.txn, event.error.path) == ("t-z", path)


class TestRefusals:
    def test_a_bad_digest_is_nacked_naming_its_path(self, session: CloudSession) -> None:
        item = {
            "item": {"id": "svc", "type": "service"},
            "version": "1",
            "indexDigest": "sha256:abc",
        }
        raw = orjson.dumps(
            {
                "header": {"version": PROTOCOL_VERSION, "systemId": UNIT, "txn": "t-dig"},
                "data": {"messageType": "desiredStatus", "items": [item]},
            }
        )
        _, ours = session.send(UnitStatus())
        event = session.receive(raw)
        assert isinstance(event, Refused)
        assert session.pending_frames() == [ours]
        assert event.txn == "t-dig"
        assert event.error.path == "$.data.items[0].indexDigest"
        envelope, nack = nack_of(event)
        assert envelope.header.txn == "t-dig"
        assert nack.error_info.message == (
            "$.data.items[0].indexDigest: invalid digest 'sha256:abc': "
            "sha256 needs 64 hex digits, got 3"
        )
        assert nack.error_info.aos_code == AosCode.INVALID_ARGUMENT

    @pytest.mark.parametrize("raw", [b"not json", b"", b"[1, 2]", b"\xff\xfe", "{"])
    def test_unreadable_frames_are_nacked_under_a_new_txn(
        self, session: CloudSession, raw: bytes | str
    ) -> None:
        event = session.receive(raw)
        assert isinstance(event, Refused)
        assert event.txn is None
        envelope, nack = nack_of(event)
        assert envelope.header.txn  # a fresh one, so the nack is still a valid frame
        assert nack.error_info.message == event.error.message
        assert nack.error_info.aos_code == int(event.error.code)

    def test_a_bad_body_under_a_readable_txn_is_nacked_under_that_txn(
        self, session: CloudSession
    ) -> None:
        raw = orjson.dumps(
            {
                "header": {"version": PROTOCOL_VERSION, "systemId": UNIT, "txn": "t-bad"},
                "data": {"messageType": "noSuchMessage"},
            }
        )
        event = session.receive(raw)
        assert isinstance(event, Refused)
        assert event.txn == "t-bad"
        envelope, nack = nack_of(event)
        assert envelope.header.txn == "t-bad"
        assert "noSuchMessage" in nack.error_info.message
        assert event.error.path in nack.error_info.message

    def test_a_refusal_leaves_pending_messages_alone(
        self, session: CloudSession, clock: FakeClock
    ) -> None:
        _, frame = session.send(UnitStatus())
        session.receive(b"garbage")
        assert session.pending_frames() == [frame]
        clock.advance(10.0)
        assert session.due() == ([frame], [])


class TestForget:
    def test_forget_one_type_keeps_the_others(self, session: CloudSession) -> None:
        session.send(UnitStatus(is_delta_info=True))
        _, blob_frame = session.send(RequestBlobUrls("c", ("sha256:" + "b" * 64,)))
        session.send(UnitStatus())
        session.forget("unitStatus")
        assert session.pending_frames() == [blob_frame]

    def test_forget_all(self, session: CloudSession, clock: FakeClock) -> None:
        session.send(UnitStatus())
        session.send(RequestBlobUrls("c", ("sha256:" + "b" * 64,)))
        session.forget()
        assert session.pending_frames() == []
        assert session.next_deadline() is None
        clock.advance(60.0)
        assert session.due() == ([], [])


class FakeSocket:
    """Records what the link sends."""

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []

    async def send(self, frame: bytes | str) -> None:
        self.sent.append(frame)


class Records(logging.Handler):
    """Keeps the structured fields of each log record."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), getattr(record, "fields", {})))


@pytest.fixture
def link_logs() -> Iterator[Records]:
    logger = logging.getLogger("aoscore.communication")
    records, level = Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


class TestLinkDispatch:
    """The link answers nothing to a dropped frame and logs why."""

    @staticmethod
    def link() -> CloudLink:
        async def ignore(*_: object) -> None:
            return None

        return CloudLink("ws://cloud.invalid", UNIT, on_message=ignore, on_connect=ignore)

    async def test_a_dropped_frame_is_logged_with_its_field_and_value(
        self, link_logs: Records
    ) -> None:
        ws: Any = FakeSocket()
        header = Header(version=6, system_id=UNIT, txn="t-old")
        await self.link()._dispatch(ws, dump_frame(Envelope(header, DesiredStatus())), 0.0)
        assert ws.sent == []
        reason = f"unsupported protocol version 6 (this unit speaks {PROTOCOL_VERSION})"
        assert link_logs.lines == [
            (
                "message.dropped",
                {
                    "txn": "t-old",
                    "path": "$.header.version",
                    "seen": 6,
                    "reason": reason,
                    "next": "dropped; not acked, not nacked",
                },
            )
        ]

    async def test_a_frame_for_another_unit_is_logged_and_not_answered(
        self, link_logs: Records
    ) -> None:
        ws: Any = FakeSocket()
        await self.link()._dispatch(ws, from_cloud(Ack(), "t-x", system_id="unit-2"), 0.0)
        assert ws.sent == []
        ((event, fields),) = link_logs.lines
        assert (event, fields["path"], fields["seen"]) == (
            "message.dropped",
            "$.header.systemId",
            "unit-2",
        )
