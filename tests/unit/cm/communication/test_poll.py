"""Polling, the cloud link's fallback transport: the jittered schedule, the decision to poll,
the ETag kept only once the ack reached the cloud, and the channel against an in-memory cloud
(httpx's MockTransport): 200 then 304, acks and nacks, a 401 answered by discovery again."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from aoscore_py.cm.communication.poll import (
    EtagBook,
    EtagFile,
    PollSchedule,
    PollTarget,
    answer_of,
    fallback_wait,
    jittered,
)
from aoscore_py.cm.communication.pollchannel import PollChannel, Refresh
from aoscore_py.cm.communication.session import CloudSession
from aoscore_py.protocol import ErrorInfo, UnitStatus

UNIT = "unit-1"
BASE = "https://cloud.test:8443/"


class TestSchedule:
    def test_intervals_stay_within_20_percent_and_spread(self) -> None:
        rng = random.Random(3)
        delays = [jittered(60.0, rng) for _ in range(500)]
        assert all(48.0 <= d <= 72.0 for d in delays)
        assert max(delays) - min(delays) > 15.0  # a fleet does not poll in step

    def test_the_first_poll_is_at_once_then_an_interval_later(self) -> None:
        schedule = PollSchedule(60.0, random.Random(1))
        assert schedule.due() is None
        schedule.polled(100.0)
        due = schedule.due()
        assert due is not None and 148.0 <= due <= 172.0

    def test_a_push_starts_the_interval_again(self) -> None:
        schedule = PollSchedule(60.0, random.Random(1))
        schedule.polled(100.0)
        schedule.pushed(150.0)
        due = schedule.due()
        assert due is not None and due >= 150.0 + 48.0


class TestFallback:
    def test_no_polling_while_the_websocket_is_up(self) -> None:
        assert fallback_wait(1000.0, 0.0, 300.0, ws_up=True) is None

    def test_polls_once_poll_after_has_passed_since_the_websocket_was_last_up(self) -> None:
        assert fallback_wait(100.0, 0.0, 300.0, ws_up=False) == 200.0
        assert fallback_wait(300.0, 0.0, 300.0, ws_up=False) == 0.0
        assert fallback_wait(5000.0, 0.0, 300.0, ws_up=False) == 0.0

    def test_a_websocket_that_was_up_recently_delays_polling(self) -> None:
        assert fallback_wait(1000.0, 900.0, 300.0, ws_up=False) == 200.0


class TestEtags:
    def test_an_offer_becomes_current_only_when_acked(self) -> None:
        book = EtagBook()
        book.offered("t1", '"a"')
        assert book.current is None
        assert book.answered("t1", acked=True) == '"a"'
        assert book.current == '"a"'
        assert book.answered("t1", acked=True) is None  # answered once

    def test_a_nack_forgets_the_offer_so_the_next_poll_fetches_it_again(self) -> None:
        book = EtagBook('"old"')
        book.offered("t2", '"new"')
        assert book.answered("t2", acked=False) is None
        assert book.current == '"old"'
        assert book.answered("t2", acked=True) is None

    def test_an_answer_to_another_message_keeps_nothing(self) -> None:
        book = EtagBook()
        book.offered("t1", '"a"')
        assert book.answered("blob-urls-txn", acked=True) is None

    def test_the_file_keeps_the_etag_for_its_url_only(self, tmp_path: Path) -> None:
        store = EtagFile(tmp_path / "poll-etag.json")
        assert store.load("https://a/units/u/desired") is None
        store.save("https://a/units/u/desired", '"e1"')
        assert store.load("https://a/units/u/desired") == '"e1"'
        assert store.load("https://b/units/u/desired") is None
        assert not list(tmp_path.glob(".*.tmp"))

    def test_a_damaged_file_is_no_etag(self, tmp_path: Path) -> None:
        (tmp_path / "poll-etag.json").write_bytes(b'{"url": "https://a/u", "et')
        assert EtagFile(tmp_path / "poll-etag.json").load("https://a/u") is None

    def test_acks_and_nacks_are_told_from_other_frames(self) -> None:
        session = CloudSession(UNIT)
        assert answer_of(session.ack("t1")) == ("t1", True)
        assert answer_of(session.nack("t2", ErrorInfo(aos_code=1, message="no"))) == ("t2", False)
        assert answer_of(b"not json") is None
        assert answer_of(b'{"header": {"txn": "t"}, "data": {"messageType": "unitStatus"}}') is None


class FakeCloud:
    """The two poll endpoints in memory, with a request log."""

    def __init__(self) -> None:
        self.etag = '"v1"'
        self.frame = orjson.dumps(
            {
                "header": {"version": 7, "systemId": UNIT, "txn": "ds-1"},
                "data": {"messageType": "desiredStatus"},
            }
        )
        self.requests: list[tuple[str, str, str | None]] = []
        self.posted: list[list[dict]] = []
        self.token = "good"

    def handle(self, request: httpx.Request) -> httpx.Response:
        auth = request.headers.get("Authorization")
        self.requests.append(
            (request.method, request.url.path, request.headers.get("If-None-Match"))
        )
        if auth != f"Bearer {self.token}":
            return httpx.Response(401, json={"error": "expired"})
        if request.method == "GET":
            if request.headers.get("If-None-Match") == self.etag:
                return httpx.Response(304, headers={"ETag": self.etag})
            return httpx.Response(200, content=self.frame, headers={"ETag": self.etag})
        frames = orjson.loads(request.content)
        self.posted.append(frames)
        replies = [
            {
                "header": {"version": 7, "systemId": UNIT, "txn": f["header"]["txn"]},
                "data": {"messageType": "ack"},
            }
            for f in frames
            if f["data"]["messageType"] not in ("ack", "nack")
        ]
        return httpx.Response(200, json=replies)


def channel(
    cloud: FakeCloud, tmp_path: Path, token: str = "good", refresh: Refresh | None = None
) -> tuple[PollChannel, PollSchedule]:
    schedule = PollSchedule(0.05, random.Random(1))
    target = PollTarget.of(BASE, UNIT, {"Authorization": f"Bearer {token}"}, None)
    return (
        PollChannel(
            target,
            schedule,
            EtagFile(tmp_path / "poll-etag.json"),
            refresh=refresh,
            transport=httpx.MockTransport(cloud.handle),
        ),
        schedule,
    )


async def next_frame(it: AsyncIterator[bytes], timeout: float = 2.0) -> dict:
    return orjson.loads(await asyncio.wait_for(anext(it), timeout))


class TestChannel:
    async def test_a_desired_status_then_304_and_the_acked_etag_survives_a_restart(
        self, tmp_path: Path
    ) -> None:
        cloud = FakeCloud()
        first, _ = channel(cloud, tmp_path)
        frames = aiter(first)
        desired = await next_frame(frames)
        assert desired["header"]["txn"] == "ds-1"
        assert not (tmp_path / "poll-etag.json").exists()  # not acked yet
        await first.send(CloudSession(UNIT).ack("ds-1"))
        for _ in range(100):
            if (tmp_path / "poll-etag.json").exists():
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # a few more polls: each answered 304
        await first.close()
        gets = [r for r in cloud.requests if r[0] == "GET"]
        assert gets[0][2] is None and gets[-1][2] == '"v1"'
        cloud.requests.clear()
        second, _ = channel(cloud, tmp_path)
        frames = aiter(second)
        with pytest.raises(TimeoutError):
            await next_frame(frames, timeout=0.2)
        await second.close()
        assert cloud.requests[0] == ("GET", f"/units/{UNIT}/desired", '"v1"')

    async def test_a_nacked_desired_status_is_fetched_again(self, tmp_path: Path) -> None:
        cloud = FakeCloud()
        chan, _ = channel(cloud, tmp_path)
        frames = aiter(chan)
        await next_frame(frames)
        await chan.send(CloudSession(UNIT).nack("ds-1", ErrorInfo(aos_code=3, message="full")))
        again = await next_frame(frames)
        await chan.close()
        assert again["header"]["txn"] == "ds-1"
        assert not (tmp_path / "poll-etag.json").exists()

    async def test_sent_frames_go_in_one_post_and_its_acks_come_back(self, tmp_path: Path) -> None:
        cloud = FakeCloud()
        cloud.etag = "never-matched"
        chan, schedule = channel(cloud, tmp_path)
        schedule.polled(1e12)  # no poll in this test
        frames = aiter(chan)
        session = CloudSession(UNIT)
        sent = [session.send(UnitStatus(is_delta_info=True)) for _ in range(3)]
        for _, frame in sent:
            await chan.send(frame)
        acks = [await next_frame(frames) for _ in sent]
        await chan.close()
        assert len(cloud.posted) == 1 and len(cloud.posted[0]) == 3
        assert [a["header"]["txn"] for a in acks] == [txn for txn, _ in sent]

    async def test_a_401_runs_discovery_and_tries_again(self, tmp_path: Path) -> None:
        cloud = FakeCloud()
        asked = []

        async def refresh() -> PollTarget:
            asked.append(1)
            return PollTarget.of(BASE, UNIT, {"Authorization": "Bearer good"}, None)

        chan, _ = channel(cloud, tmp_path, token="expired", refresh=refresh)
        frames = aiter(chan)
        desired = await next_frame(frames)
        await chan.close()
        assert desired["header"]["txn"] == "ds-1" and asked == [1]
