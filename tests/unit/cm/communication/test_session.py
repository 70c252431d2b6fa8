"""CloudSession: envelope checks and events, driven by bytes; and what the link does with each
event (a dropped frame, a refusal, an ack or a nack of ours, which the outbox then holds).

What waits for an ack and when it is sent again is the outbox's, tested in test_outbox.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from aoscore_py.cm.communication.link import CloudLink
from aoscore_py.cm.communication.outbox import Outbox, OutboxLimits
from aoscore_py.cm.communication.session import (
    Acked,
    CloudSession,
    Dropped,
    Nacked,
    Received,
    Refused,
)
from aoscore_py.cm.communication.targets import StaticTargets
from aoscore_py.errors import AosCode
from aoscore_py.protocol import (
    PROTOCOL_VERSION,
    Ack,
    BlobUrlInfo,
    BlobUrls,
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

from .stubs import FakeClock, MemoryOutboxStorage

UNIT = "unit-1"


@pytest.fixture
def session() -> CloudSession:
    return CloudSession(UNIT)


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


class TestAckAndNack:
    """An ack or nack of ours becomes an event naming our txn; the outbox decides the rest."""

    def test_an_ack_names_its_txn(self, session: CloudSession) -> None:
        txn, _ = session.send(UnitStatus())
        assert session.receive(from_cloud(Ack(), txn)) == Acked(txn)

    def test_an_ack_of_a_txn_we_never_sent_is_still_an_ack_event(
        self, session: CloudSession
    ) -> None:
        assert session.receive(from_cloud(Ack(), "never-sent")) == Acked("never-sent")

    def test_a_nack_reports_its_delay_and_reason(self, session: CloudSession) -> None:
        txn, _ = session.send(UnitStatus())
        why = ErrorInfo(int(AosCode.WRONG_STATE), 0, "busy")
        event = session.receive(from_cloud(Nack(retry_after=2500, error_info=why), txn))
        assert event == Nacked(txn, 2.5, why)

    def test_a_nack_without_error_info_has_none(self, session: CloudSession) -> None:
        event = session.receive(from_cloud(Nack(retry_after=0), "other"))
        assert event == Nacked("other", 0.0, None)


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

    def test_an_ack_for_another_unit_is_dropped_not_acked(self, session: CloudSession) -> None:
        txn, _ = session.send(UnitStatus())
        event = session.receive(from_cloud(Ack(), txn, system_id="u2"))
        assert isinstance(event, Dropped)
        assert (event.txn, event.seen) == (txn, "u2")

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
        event = session.receive(raw)
        assert isinstance(event, Refused)
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


def make_link(
    storage: MemoryOutboxStorage | None = None, clock: FakeClock | None = None
) -> CloudLink:
    """A link that never dials, over an outbox in memory."""

    async def ignore(*_: object) -> None:
        return None

    clock = clock or FakeClock()
    outbox = Outbox(
        storage or MemoryOutboxStorage(), clock, clock, OutboxLimits(ack_timeout_s=10.0)
    )
    return CloudLink(
        StaticTargets("ws://cloud.invalid"), UNIT, outbox, on_message=ignore, on_connect=ignore
    )


class TestLinkDispatch:
    """The link answers nothing to a dropped frame and logs why."""

    @staticmethod
    def link() -> CloudLink:
        return make_link()

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


class TestLinkOutbox:
    """What the link does with its outbox: a message is stored before anything is sent, an ack
    of ours takes it out, a nack holds it, and nothing else touches it."""

    async def test_a_message_sent_while_down_is_stored_and_not_sent(self) -> None:
        storage = MemoryOutboxStorage()
        link = make_link(storage)
        status = UnitStatus(seq=3)
        txn = await link.send(status)
        (entry,) = storage.entries
        assert (entry.txn, entry.message_type, entry.seq) == (txn, "unitStatus", 3)
        envelope = parse_frame(entry.frame)
        assert (envelope.header.txn, envelope.data) == (txn, status)
        assert link.outbox.due() == [], "buffer-only until the link is up"

    async def test_an_ack_of_ours_takes_it_out_of_the_outbox(self) -> None:
        storage = MemoryOutboxStorage()
        link = make_link(storage)
        txn = await link.send(UnitStatus())
        ws: Any = FakeSocket()
        await link._dispatch(ws, from_cloud(Ack(), txn), 0.0)
        assert ws.sent == [], "an ack is not answered"
        assert link.outbox.depth == 0
        link.outbox.flush_acked()
        assert storage.entries == []

    async def test_an_ack_for_another_unit_does_not_clear_ours(self) -> None:
        link = make_link()
        txn = await link.send(UnitStatus())
        ws: Any = FakeSocket()
        await link._dispatch(ws, from_cloud(Ack(), txn, system_id="unit-2"), 0.0)
        assert ws.sent == []
        assert link.outbox.depth == 1

    async def test_a_nack_of_ours_holds_it_until_its_retry_after(self) -> None:
        clock = FakeClock()
        link = make_link(clock=clock)
        link.outbox.connected()
        txn = await link.send(UnitStatus())
        (frame,) = link.outbox.due()
        ws: Any = FakeSocket()
        await link._dispatch(ws, from_cloud(Nack(retry_after=25_000), txn), 0.0)
        assert ws.sent == []
        assert link.outbox.depth == 1
        clock.advance(24.9)
        assert link.outbox.due() == []
        clock.advance(0.1)
        assert link.outbox.due() == [frame]

    async def test_a_refused_frame_is_nacked_and_leaves_ours_alone(self) -> None:
        link = make_link()
        await link.send(UnitStatus())
        ws: Any = FakeSocket()
        await link._dispatch(ws, b"garbage", 0.0)
        (reply,) = ws.sent
        assert isinstance(parse_frame(reply).data, Nack)
        assert link.outbox.depth == 1


class TestLateBlobUrls:
    """On a link whose round trip is longer than the blobUrls timeout, the answer to the first
    request arrives after the second was sent: it must still be taken."""

    async def test_an_answer_to_an_earlier_request_is_taken(self) -> None:
        link = make_link()
        link._blob_urls_timeout = 0.05
        ws: Any = FakeSocket()
        link._ws = ws
        link.outbox.connected()
        link.connected.set()
        digest = "sha256:" + "a" * 64
        asking = asyncio.create_task(link.request_blob_urls([digest]))
        for _ in range(200):  # until the first request timed out and was asked again
            if len(ws.sent) >= 2:
                break
            await asyncio.sleep(0.01)
        first, again = (parse_frame(f).data for f in ws.sent[:2])
        assert isinstance(first, RequestBlobUrls) and isinstance(again, RequestBlobUrls)
        # Our addition: each request names this boot and its number within it.
        assert (first.boot_id, first.seq) == (link.boot_id, 1)
        assert (again.boot_id, again.seq) == (link.boot_id, 2)
        info = BlobUrlInfo(digest, ("http://blobs.invalid/b",), bytes(32), 1)
        late = BlobUrls(first.correlation_id, (info,))
        await link._dispatch(ws, from_cloud(late, "cloud-late"), 0.0)
        assert await asyncio.wait_for(asking, 1.0) == [info]


class TestAckDeleteRefused:
    async def test_a_store_that_refuses_the_delete_does_not_take_the_link_down(self) -> None:
        """A full disk refuses the batched delete of acked messages: the link logs it and the
        deletes go with the next commit (at worst one resend, which the cloud records once)."""
        storage = MemoryOutboxStorage()
        link = make_link(storage)
        link.outbox.connected()
        txn = await link.send(UnitStatus(is_delta_info=False, seq=1))
        link.outbox.due()
        assert link.outbox.acked(txn)
        storage.fail_next = True
        link._flush_acked()  # no exception
        assert txn in storage.txns, "still stored: the delete was refused"
        await link.send(UnitStatus(is_delta_info=False, seq=2))
        assert txn not in storage.txns, "deleted with the next commit"
