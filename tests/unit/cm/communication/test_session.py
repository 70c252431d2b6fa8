"""CloudSession: envelope checks, acks and resends, driven by bytes and a fake clock."""

from __future__ import annotations

import orjson
import pytest

from aoscore_py.cm.communication.session import (
    Acked,
    CloudSession,
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


class TestRefusals:
    def test_another_protocol_version_is_nacked_under_its_txn(self, session: CloudSession) -> None:
        header = Header(version=6, system_id=UNIT, txn="t-old")
        event = session.receive(dump_frame(Envelope(header, DesiredStatus())))
        assert isinstance(event, Refused)
        assert event.txn == "t-old"
        assert event.error.path == "$.header.version"
        envelope, nack = nack_of(event)
        assert envelope.header.txn == "t-old"
        assert "version 6" in nack.error_info.message
        assert nack.error_info.aos_code == AosCode.NOT_SUPPORTED

    def test_a_newer_frame_that_does_not_parse_as_v7_is_refused_for_its_version(
        self, session: CloudSession
    ) -> None:
        raw = orjson.dumps(
            {
                "header": {"version": 8, "systemId": UNIT, "txn": "t-v8"},
                "data": {"messageType": "somethingNewInV8"},
            }
        )
        event = session.receive(raw)
        assert isinstance(event, Refused)
        assert event.txn == "t-v8"
        _, nack = nack_of(event)
        assert "version 8" in nack.error_info.message
        assert nack.error_info.aos_code == AosCode.NOT_SUPPORTED

    def test_a_frame_for_another_unit_is_nacked(self, session: CloudSession) -> None:
        event = session.receive(from_cloud(DesiredStatus(), "t-x", system_id="unit-2"))
        assert isinstance(event, Refused)
        envelope, nack = nack_of(event)
        assert envelope.header.txn == "t-x"
        assert "unit-2" in nack.error_info.message
        assert UNIT in nack.error_info.message
        assert event.error.path == "$.header.systemId"

    def test_an_ack_for_another_unit_does_not_clear_ours(self, session: CloudSession) -> None:
        txn, frame = session.send(UnitStatus())
        assert isinstance(session.receive(from_cloud(Ack(), txn, system_id="u2")), Refused)
        assert session.pending_frames() == [frame]

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
