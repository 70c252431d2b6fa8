"""The durable outbox, pure: what is sent when, what an ack or a nack does, what the bounds push
out, and what a restart finds, on a fake clock and an in-memory store."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aoscore_py.cm.communication.interfaces import OutboxEntry
from aoscore_py.cm.communication.outbox import (
    DEFAULT_RETRY_AFTER_S,
    MAX_NACKS,
    Outbox,
    OutboxLimits,
    PublishMode,
)
from aoscore_py.errors import StorageError

from .stubs import FakeClock, MemoryOutboxStorage

STATUS = "unitStatus"
BLOBS = "requestBlobUrls"
TIMEOUT = 10.0
LIMITS = OutboxLimits(max_count=5, max_bytes=1000, ack_timeout_s=TIMEOUT, window=2)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def storage() -> MemoryOutboxStorage:
    return MemoryOutboxStorage()


def make(storage: MemoryOutboxStorage, clock: FakeClock, limits: OutboxLimits = LIMITS) -> Outbox:
    return Outbox(storage, clock, clock, limits)


@pytest.fixture
def outbox(storage: MemoryOutboxStorage, clock: FakeClock) -> Outbox:
    return make(storage, clock)


def frame(txn: str, size: int = 0) -> bytes:
    """A frame that names its txn, padded to `size` bytes."""
    raw = f"<{txn}>".encode()
    return raw + b"." * max(0, size - len(raw))


def put(outbox: Outbox, *txns: str, message_type: str = STATUS) -> list[bytes]:
    frames = [frame(t) for t in txns]
    for txn, raw in zip(txns, frames, strict=True):
        outbox.append(txn, message_type, raw)
    return frames


class TestOffline:
    def test_nothing_is_sent_while_offline_but_everything_is_stored(
        self, outbox: Outbox, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        put(outbox, "t-1", "t-2", "t-3")
        assert outbox.mode is PublishMode.BUFFER
        assert outbox.due() == []
        clock.advance(10 * TIMEOUT)
        assert outbox.due() == []
        assert outbox.next_deadline() is None
        assert storage.txns == ["t-1", "t-2", "t-3"]
        assert outbox.depth == 3

    def test_a_message_is_stored_before_it_is_first_sent(
        self, outbox: Outbox, storage: MemoryOutboxStorage
    ) -> None:
        outbox.connected()
        (raw,) = put(outbox, "t-1")
        assert storage.txns == ["t-1"]
        assert storage.entries[0].frame == raw
        assert outbox.due() == [raw]

    def test_a_refused_write_changes_nothing(
        self, outbox: Outbox, storage: MemoryOutboxStorage
    ) -> None:
        put(outbox, "t-1")
        storage.fail_next = True
        with pytest.raises(StorageError):
            outbox.append("t-2", STATUS, frame("t-2"), replace_types=(STATUS,))
        assert storage.txns == ["t-1"]
        assert [e.txn for e in outbox.queued(STATUS)] == ["t-1"]
        outbox.connected()
        assert outbox.due() == [frame("t-1")]

    def test_a_refused_delete_is_tried_again_with_the_next_commit(
        self, outbox: Outbox, storage: MemoryOutboxStorage
    ) -> None:
        outbox.connected()
        put(outbox, "t-1")
        outbox.due()
        outbox.acked("t-1")
        storage.fail_next = True
        with pytest.raises(StorageError):
            outbox.flush_acked()
        assert storage.txns == ["t-1"]
        assert outbox.depth == 0, "acked: not sent again on this connection"
        put(outbox, "t-2")
        assert storage.txns == ["t-2"]
        assert storage.appends[-1] == ("t-2", ("t-1",)), "the delete rode on the append"


class TestRecovering:
    def test_a_backlog_goes_out_in_order_at_most_window_at_a_time(self, outbox: Outbox) -> None:
        frames = put(outbox, "t-1", "t-2", "t-3", "t-4")
        outbox.connected()
        assert outbox.mode is PublishMode.RECOVERING
        assert outbox.due() == frames[:2]
        assert outbox.due() == [], "nothing twice, nothing past the window"

    def test_each_ack_deletes_and_lets_the_next_one_out(
        self, outbox: Outbox, storage: MemoryOutboxStorage
    ) -> None:
        frames = put(outbox, "t-1", "t-2", "t-3", "t-4")
        outbox.connected()
        outbox.due()
        assert outbox.acked("t-1") is True
        assert outbox.depth == 3
        assert outbox.due() == [frames[2]]
        assert outbox.acked("t-3") is True
        assert outbox.due() == [frames[3]]
        assert outbox.mode is PublishMode.RECOVERING

    def test_the_mode_is_direct_once_the_backlog_drained(self, outbox: Outbox) -> None:
        put(outbox, "t-1", "t-2")
        outbox.connected()
        outbox.due()
        outbox.acked("t-2")
        assert outbox.mode is PublishMode.RECOVERING, "t-1 still waits"
        outbox.acked("t-1")
        assert outbox.mode is PublishMode.DIRECT
        assert outbox.depth == 0

    def test_connecting_with_nothing_queued_is_direct(self, outbox: Outbox) -> None:
        outbox.connected()
        assert outbox.mode is PublishMode.DIRECT
        (raw,) = put(outbox, "t-1")
        assert outbox.due() == [raw]

    def test_a_message_made_while_recovering_waits_behind_the_backlog(self, outbox: Outbox) -> None:
        frames = put(outbox, "t-1", "t-2", "t-3")
        outbox.connected()
        assert outbox.due() == frames[:2]
        (late,) = put(outbox, "t-new")
        assert outbox.due() == []
        outbox.acked("t-1")
        assert outbox.due() == [frames[2]]
        outbox.acked("t-2")
        assert outbox.due() == [late]

    def test_going_offline_is_buffer_only_again(self, outbox: Outbox, clock: FakeClock) -> None:
        put(outbox, "t-1")
        outbox.connected()
        outbox.due()
        outbox.disconnected()
        assert outbox.mode is PublishMode.BUFFER
        clock.advance(TIMEOUT)
        assert outbox.due() == []


class TestResend:
    def test_nothing_is_sent_again_before_the_ack_timeout(
        self, outbox: Outbox, clock: FakeClock
    ) -> None:
        outbox.connected()
        put(outbox, "t-1")
        outbox.due()
        assert outbox.next_deadline() == clock.now + TIMEOUT
        clock.advance(TIMEOUT - 0.1)
        assert outbox.due() == []

    def test_the_same_bytes_go_again_once_per_timeout_for_as_long_as_it_takes(
        self, outbox: Outbox, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox.connected()
        (raw,) = put(outbox, "t-1")
        assert outbox.due() == [raw]
        for _ in range(50):  # far past any number of tries: there is no give-up
            clock.advance(TIMEOUT)
            assert outbox.due() == [raw]
            assert outbox.due() == [], "one resend per timeout"
        assert storage.txns == ["t-1"]
        assert storage.deletes == []

    def test_an_ack_after_a_resend_stops_the_resends(
        self, outbox: Outbox, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox.connected()
        put(outbox, "t-1")
        outbox.due()
        clock.advance(TIMEOUT)
        assert len(outbox.due()) == 1
        assert outbox.acked("t-1") is True
        assert outbox.next_deadline() is None
        clock.advance(10 * TIMEOUT)
        assert outbox.due() == []
        outbox.flush_acked()
        assert storage.txns == []

    def test_an_unknown_ack_changes_nothing(
        self, outbox: Outbox, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox.connected()
        frames = put(outbox, "t-1", "t-2", "t-3")
        outbox.due()
        deadline = outbox.next_deadline()
        assert outbox.acked("never-sent") is False
        assert storage.txns == ["t-1", "t-2", "t-3"]
        assert storage.deletes == []
        assert outbox.next_deadline() == deadline
        assert outbox.due() == [], "the window is still full"
        clock.advance(TIMEOUT)
        assert outbox.due() == frames[:2]

    def test_a_second_ack_of_the_same_txn_is_unknown(self, outbox: Outbox) -> None:
        outbox.connected()
        put(outbox, "t-1")
        outbox.due()
        assert outbox.acked("t-1") is True
        assert outbox.acked("t-1") is False


class TestAckedDeletes:
    """An ack takes the message out of the queue at once and out of the store in a batch: at
    the next `flush_acked`, or with the next append's transaction."""

    def test_an_ack_is_deleted_at_the_next_flush_in_one_transaction(
        self, outbox: Outbox, storage: MemoryOutboxStorage
    ) -> None:
        put(outbox, "t-1", "t-2", "t-3")
        outbox.connected()
        outbox.due()
        outbox.acked("t-1")
        outbox.acked("t-2")
        assert storage.txns == ["t-1", "t-2", "t-3"]
        outbox.flush_acked()
        assert storage.txns == ["t-3"]
        assert storage.deletes == [("t-1", "t-2")]
        outbox.flush_acked()
        assert storage.deletes == [("t-1", "t-2")], "nothing left to delete: no transaction"

    def test_an_append_deletes_the_acked_ones_in_its_transaction(
        self, outbox: Outbox, storage: MemoryOutboxStorage
    ) -> None:
        outbox.connected()
        put(outbox, "t-1")
        outbox.due()
        outbox.acked("t-1")
        put(outbox, "t-2")
        assert storage.txns == ["t-2"]
        assert storage.appends[-1] == ("t-2", ("t-1",))
        assert storage.deletes == []

    def test_an_ack_lost_to_a_restart_only_sends_the_message_once_more(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        before = make(storage, clock)
        frames = put(before, "t-1", "t-2")
        before.connected()
        before.due()
        before.acked("t-1")  # killed before the flush
        after = make(storage, clock)
        after.connected()
        assert after.due() == frames, "same txn, same bytes: the cloud records it once"
        assert after.acked("t-1") is True


class TestNack:
    def test_a_short_retry_after_brings_the_resend_forward(
        self, outbox: Outbox, clock: FakeClock
    ) -> None:
        outbox.connected()
        (raw,) = put(outbox, "t-1")
        outbox.due()
        assert outbox.nacked("t-1", 0.5) is False
        clock.advance(0.4)
        assert outbox.due() == []
        clock.advance(0.1)
        assert outbox.due() == [raw]

    def test_a_long_retry_after_holds_the_resend_past_the_ack_timeout(
        self, outbox: Outbox, clock: FakeClock
    ) -> None:
        outbox.connected()
        (raw,) = put(outbox, "t-1")
        outbox.due()
        outbox.nacked("t-1", 25.0)
        clock.advance(TIMEOUT)
        assert outbox.due() == []
        assert outbox.next_deadline() == pytest.approx(clock.now + 15.0)
        clock.advance(15.0)
        assert outbox.due() == [raw]

    def test_a_nacked_message_is_kept_and_holds_its_place(
        self, outbox: Outbox, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox.connected()
        put(outbox, "t-1", "t-2", "t-3")
        outbox.due()
        outbox.nacked("t-1", 0.0)
        assert storage.txns == ["t-1", "t-2", "t-3"]
        assert outbox.due() == [], "a retryAfter of 0 means the protocol's default"
        clock.advance(DEFAULT_RETRY_AFTER_S)
        assert outbox.due() == [frame("t-1")], "sent again; t-3 still waits for the window"

    def test_max_nacks_refusals_drop_the_message_and_free_its_place(
        self, outbox: Outbox, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        dropped: list[str] = []
        outbox.on_dropped = lambda entry: dropped.append(entry.txn)
        outbox.connected()
        frames = put(outbox, "t-1", "t-2", "t-3")
        outbox.due()
        for _ in range(MAX_NACKS - 1):
            assert outbox.nacked("t-1", 0.0) is False
            clock.advance(DEFAULT_RETRY_AFTER_S)
            assert outbox.due() == [frames[0]]
        assert outbox.nacked("t-1", 0.0) is True
        assert dropped == ["t-1"], "whoever made it learns it never went out"
        assert outbox.depth == 2
        assert outbox.due() == [frames[2]]
        outbox.flush_acked()
        assert storage.txns == ["t-2", "t-3"]
        assert outbox.nacked("t-1", 0.0) is False, "gone: a late nack is unknown"

    def test_dropping_the_last_message_ends_recovering(self, outbox: Outbox) -> None:
        put(outbox, "t-1")
        outbox.connected()
        outbox.due()
        for _ in range(MAX_NACKS):
            outbox.nacked("t-1", 0.0)
        assert outbox.depth == 0
        assert outbox.mode is PublishMode.DIRECT

    def test_a_nack_for_an_unknown_txn_changes_nothing(
        self, outbox: Outbox, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox.connected()
        put(outbox, "t-1")
        outbox.due()
        deadline = outbox.next_deadline()
        assert outbox.nacked("other", 0.0) is False
        assert outbox.next_deadline() == deadline
        assert outbox.due() == []
        assert storage.txns == ["t-1"]


class TestReconnect:
    def test_what_was_in_flight_goes_again_at_once_in_order(
        self, outbox: Outbox, clock: FakeClock
    ) -> None:
        frames = put(outbox, "t-1", "t-2", "t-3")
        outbox.connected()
        assert outbox.due() == frames[:2]
        outbox.disconnected()
        clock.advance(1.0)  # well before the ack timeout
        outbox.connected()
        assert outbox.mode is PublishMode.RECOVERING
        assert outbox.due() == frames[:2]
        assert outbox.due() == []

    def test_an_ack_received_before_the_drop_is_not_sent_again(self, outbox: Outbox) -> None:
        frames = put(outbox, "t-1", "t-2", "t-3")
        outbox.connected()
        outbox.due()
        outbox.acked("t-1")
        outbox.disconnected()
        outbox.connected()
        assert outbox.due() == frames[1:]


class TestBounds:
    def test_the_oldest_is_evicted_when_the_count_is_reached(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox = make(storage, clock, OutboxLimits(max_count=3, window=10))
        put(outbox, "t-1", "t-2", "t-3", message_type=BLOBS)
        out = outbox.append("t-4", BLOBS, frame("t-4"))
        assert [e.txn for e in out] == ["t-1"]
        assert storage.txns == ["t-2", "t-3", "t-4"]
        assert storage.appends[-1] == ("t-4", ("t-1",)), "one transaction"
        assert outbox.depth == 3
        outbox.connected()
        assert outbox.due() == [frame("t-2"), frame("t-3"), frame("t-4")]

    def test_the_oldest_are_evicted_until_the_bytes_fit(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox = make(storage, clock, OutboxLimits(max_count=100, max_bytes=100))
        for txn in ("t-1", "t-2", "t-3"):
            outbox.append(txn, BLOBS, frame(txn, 30))
        assert outbox.size == 90
        out = outbox.append("t-4", BLOBS, frame("t-4", 50))
        assert [e.txn for e in out] == ["t-1", "t-2"]
        assert storage.txns == ["t-3", "t-4"]
        assert outbox.size == 80

    def test_replace_types_folds_the_queued_statuses_and_keeps_the_rest(
        self, outbox: Outbox, storage: MemoryOutboxStorage
    ) -> None:
        outbox.append("s-1", STATUS, frame("s-1"), seq=1)
        outbox.append("b-1", BLOBS, frame("b-1"))
        outbox.append("s-2", STATUS, frame("s-2"), seq=2)
        out = outbox.append("s-3", STATUS, frame("s-3"), seq=3, replace_types=(STATUS,))
        assert [e.txn for e in out] == ["s-1", "s-2"]
        assert storage.txns == ["b-1", "s-3"]
        assert storage.appends[-1] == ("s-3", ("s-1", "s-2")), "one transaction"
        assert [(e.txn, e.seq) for e in outbox.queued(STATUS)] == [("s-3", 3)]
        assert [e.txn for e in outbox.queued(BLOBS)] == ["b-1"]

    def test_a_folded_status_already_sent_is_not_sent_again(
        self, outbox: Outbox, clock: FakeClock
    ) -> None:
        outbox.connected()
        outbox.append("s-1", STATUS, frame("s-1"))
        assert outbox.due() == [frame("s-1")]
        outbox.append("s-2", STATUS, frame("s-2"), replace_types=(STATUS,))
        assert outbox.due() == [frame("s-2")]
        clock.advance(TIMEOUT)
        assert outbox.due() == [frame("s-2")]
        assert outbox.acked("s-1") is False, "its late ack is unknown"

    def test_still_over_after_folding_evicts_the_oldest_other(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox = make(storage, clock, OutboxLimits(max_count=3))
        put(outbox, "b-1", "b-2", "b-3", message_type=BLOBS)
        out = outbox.append("s-1", STATUS, frame("s-1"), replace_types=(STATUS,))
        assert [e.txn for e in out] == ["b-1"]
        assert storage.txns == ["b-2", "b-3", "s-1"]

    def test_folding_alone_makes_room_without_evicting(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox = make(storage, clock, OutboxLimits(max_count=3))
        outbox.append("s-1", STATUS, frame("s-1"))
        put(outbox, "b-1", "b-2", message_type=BLOBS)
        out = outbox.append("s-2", STATUS, frame("s-2"), replace_types=(STATUS,))
        assert [e.txn for e in out] == ["s-1"]
        assert storage.txns == ["b-1", "b-2", "s-2"]

    def test_room_for_says_whether_one_more_fits(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        outbox = make(storage, clock, OutboxLimits(max_count=3, max_bytes=100))
        assert outbox.room_for(100) is True
        assert outbox.room_for(101) is False
        outbox.append("t-1", BLOBS, frame("t-1", 40))
        outbox.append("t-2", BLOBS, frame("t-2", 40))
        assert outbox.room_for(20) is True
        assert outbox.room_for(21) is False, "bytes"
        outbox.append("t-3", BLOBS, frame("t-3", 10))
        assert outbox.room_for(1) is False, "count"
        assert storage.txns == ["t-1", "t-2", "t-3"], "asking changes nothing"
        outbox.connected()
        outbox.due()
        outbox.acked("t-1")
        assert outbox.room_for(50) is True

    def test_what_an_operator_reads(self, outbox: Outbox, clock: FakeClock) -> None:
        assert (outbox.depth, outbox.size, outbox.oldest_at()) == (0, 0, None)
        made = clock.now
        outbox.append("t-1", BLOBS, frame("t-1", 30))
        clock.advance(5.0)
        outbox.append("t-2", BLOBS, frame("t-2", 20))
        assert (outbox.depth, outbox.size, outbox.oldest_at()) == (2, 50, made)


class TestRestart:
    def test_a_restart_finds_the_same_entries_in_the_same_order(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        before = make(storage, clock)
        before.append("s-1", STATUS, frame("s-1"), seq=7)
        before.append("b-1", BLOBS, frame("b-1"))
        before.append("s-2", STATUS, frame("s-2"), seq=8)
        before.append("s-3", STATUS, frame("s-3"), seq=9)
        before.connected()
        before.due()
        before.acked("s-2")  # acked out of order: gone for good
        before.flush_acked()

        after = make(storage, clock)
        assert after.mode is PublishMode.BUFFER
        assert (after.depth, after.size) == (before.depth, before.size)
        assert after.queued(STATUS) == before.queued(STATUS)
        assert [(e.txn, e.seq) for e in after.queued(STATUS)] == [("s-1", 7), ("s-3", 9)]
        after.connected()
        assert after.mode is PublishMode.RECOVERING
        assert after.due() == [frame("s-1"), frame("b-1")]
        after.acked("s-1")
        assert after.due() == [frame("s-3")]

    def test_a_message_made_after_a_restart_goes_after_the_old_ones(
        self, storage: MemoryOutboxStorage, clock: FakeClock
    ) -> None:
        put(make(storage, clock), "t-1", "t-2")
        after = make(storage, clock, OutboxLimits(window=10))
        put(after, "t-3")
        after.connected()
        assert after.due() == [frame("t-1"), frame("t-2"), frame("t-3")]


# --- a property: the bounds always hold, and only acks, folding and eviction remove anything ---

PROPERTY_LIMITS = OutboxLimits(max_count=4, max_bytes=120, ack_timeout_s=TIMEOUT, window=2)

operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("append"),
            st.sampled_from([STATUS, BLOBS]),
            st.integers(8, PROPERTY_LIMITS.max_bytes),
            st.booleans(),
        ),
        st.tuples(st.just("ack"), st.integers(0, 5)),
        st.tuples(st.just("ack-unknown")),
        st.tuples(st.just("flush")),
        st.tuples(st.just("connect")),
        st.tuples(st.just("disconnect")),
        st.tuples(st.just("advance"), st.floats(0.0, 3 * TIMEOUT)),
        st.tuples(st.just("restart")),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_the_bounds_hold_and_nothing_is_lost_but_by_ack_fold_or_eviction(
    ops: list[tuple[object, ...]],
) -> None:
    clock = FakeClock()
    storage = MemoryOutboxStorage()
    outbox = Outbox(storage, clock, clock, PROPERTY_LIMITS)
    expected: list[OutboxEntry] = []  # what must be waiting, oldest first
    sent: list[str] = []  # txns sent on this connection, not yet acked
    unflushed: set[str] = set()  # acked, still in the store until the next commit
    online = False
    names = (f"t-{n}" for n in itertools.count())

    def send() -> None:
        frames = outbox.due()
        if not online:
            assert frames == []
        waiting = {e.frame: e.txn for e in expected}
        for raw in frames:
            assert raw in waiting, "only a waiting message is sent"
            if waiting[raw] not in sent:
                sent.append(waiting[raw])
        assert len(sent) <= PROPERTY_LIMITS.window

    for op in ops:
        kind = op[0]
        if kind == "append":
            _, message_type, size, fold = op
            assert isinstance(message_type, str) and isinstance(size, int)
            txn = next(names)
            raw = frame(txn, size)
            replace = (STATUS,) if fold else ()
            fits = outbox.room_for(len(raw))
            out = outbox.append(txn, message_type, raw, replace_types=replace)
            gone = {e.txn for e in out}
            folded = [e for e in expected if e.message_type in replace]
            assert {e.txn for e in folded} <= gone, "every queued status of the type is folded"
            evicted = [e.txn for e in out if e.message_type not in replace]
            rest = [e.txn for e in expected if e.message_type not in replace]
            assert evicted == rest[: len(evicted)], "eviction takes the oldest first"
            if fits:
                assert evicted == [], "nothing is evicted while there is room"
            expected = [e for e in expected if e.txn not in gone]
            expected.append(storage.entries[-1])
            unflushed.clear()
            sent = [t for t in sent if t not in gone]
        elif kind == "ack":
            if sent:
                index = op[1]
                assert isinstance(index, int)
                txn = sent.pop(index % len(sent))
                assert outbox.acked(txn) is True
                expected = [e for e in expected if e.txn != txn]
                unflushed.add(txn)
        elif kind == "ack-unknown":
            assert outbox.acked("nobody") is False
        elif kind == "connect":
            outbox.connected()
            online, sent = True, []
            frames = outbox.due()
            assert frames == [e.frame for e in expected[: PROPERTY_LIMITS.window]], "in order"
            sent = [e.txn for e in expected[: PROPERTY_LIMITS.window]]
        elif kind == "disconnect":
            outbox.disconnected()
            online, sent = False, []
        elif kind == "advance":
            seconds = op[1]
            assert isinstance(seconds, float)
            clock.advance(seconds)
        elif kind == "flush":
            outbox.flush_acked()
            unflushed.clear()
        elif kind == "restart":
            outbox.flush_acked()  # a clean stop (`CloudLink.close`)
            unflushed.clear()
            outbox = Outbox(storage, clock, clock, PROPERTY_LIMITS)
            online, sent = False, []
        send()

        assert outbox.depth <= PROPERTY_LIMITS.max_count
        assert outbox.size <= PROPERTY_LIMITS.max_bytes
        assert outbox.size == sum(len(e.frame) for e in expected)
        assert [e for e in storage.entries if e in expected] == expected, "stored, in order"
        assert {e.txn for e in storage.entries if e not in expected} == unflushed
        for message_type in (STATUS, BLOBS):
            assert outbox.queued(message_type) == [
                e for e in expected if e.message_type == message_type
            ]
