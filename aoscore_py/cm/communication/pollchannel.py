"""The HTTPS adapter of polling (`poll.py` says what polling is): a channel with the two
operations the link uses on a WebSocket, so `CloudLink._serve` drives it unchanged. It only
moves frames: POSTs what the unit sends (batched), GETs the desired status on the schedule with
its ETag, and hands every frame it gets to the link's iteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import orjson

from ...errors import AosError
from ...logs import get_logger
from .discovery import cloud_reason
from .poll import EtagBook, EtagFile, PollSchedule, PollTarget, answer_of, txn_of

log = get_logger("communication.poll")

MAX_BATCH = 256
"""Frames sent in one POST at most."""

ANSWER_RETRY_S = 5.0
"""How long an ack or nack whose POST failed waits before it is sent again (the outbox resends
its own messages on its schedule)."""

Refresh = Callable[[], Awaitable[PollTarget]]


class PollChannel:
    """A cloud link over HTTPS polling, with a WebSocket's `send` and async iteration.

    Args:
        target: the endpoints and credentials.
        schedule: when to poll (kept by the link across channels, so a push resets it).
        etags: where the ETag is kept across restarts.
        refresh: new credentials after a 401 (discovery again).
        timeout_s: how long one request may take.
        transport: an httpx transport (tests).
    """

    def __init__(
        self,
        target: PollTarget,
        schedule: PollSchedule,
        etags: EtagFile,
        *,
        refresh: Refresh | None = None,
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.target = target
        self.schedule = schedule
        self._etag_file = etags
        self.book = EtagBook(etags.load(target.desired_url))
        self._refresh = refresh
        self._client = httpx.AsyncClient(
            verify=target.ssl_context or True,
            timeout=timeout_s,
            transport=transport,
            trust_env=False,
        )
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._outgoing: list[bytes] = []
        self._wake_writer = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self._unchanged_logged = False

    async def send(self, frame: bytes | str) -> None:
        """Queue `frame` for the next POST (frames sent together go in one)."""
        if self._closed:
            return
        self._outgoing.append(frame.encode() if isinstance(frame, str) else frame)
        self._idle.clear()
        self._wake_writer.set()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[bytes]:
        if not self._tasks and not self._closed:
            self._tasks = [
                asyncio.create_task(self._poll_loop(), name="poll"),
                asyncio.create_task(self._write_loop(), name="poll-post"),
            ]
        while True:
            frame = await self._inbox.get()
            if frame is None:
                return
            yield frame

    async def close(self) -> None:
        """Stop polling; acks already queued get a short chance to reach the cloud first."""
        if self._closed:
            return
        self._closed = True
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._client.aclose()
        self._inbox.put_nowait(None)

    # polling the desired status

    async def _poll_loop(self) -> None:
        while True:
            due = self.schedule.due()
            while due is not None and due > time.monotonic():
                await asyncio.sleep(due - time.monotonic())
                due = self.schedule.due()  # a push may have moved it
            await self._poll()
            self.schedule.polled(time.monotonic())

    async def _poll(self) -> None:
        headers = {}
        if self.book.current:
            headers["If-None-Match"] = self.book.current
        response = await self._request("GET", self.target.desired_url, headers=headers)
        if response is None:
            return
        status = response.status_code
        if status == 304:
            if not self._unchanged_logged:
                self._unchanged_logged = True
                log.info("poll.unchanged", etag=self.book.current, next="polling on schedule")
            return
        if status == 404:
            log.debug("poll.no_desired_status", url=self.target.desired_url)
            return
        if status != 200:
            log.warning(
                "poll.refused",
                url=self.target.desired_url,
                status=status,
                reason=cloud_reason(response),
                next="polling again on schedule",
            )
            return
        frame = response.content
        etag = response.headers.get("ETag")
        txn = txn_of(frame)
        if etag and txn:
            self.book.offered(txn, etag)
        self._unchanged_logged = False
        log.info("poll.desired", txn=txn, etag=etag, bytes=len(frame))
        await self._inbox.put(frame)

    # posting what the unit sends

    async def _write_loop(self) -> None:
        while True:
            if not self._outgoing:
                self._idle.set()
                self._wake_writer.clear()
                await self._wake_writer.wait()
                continue
            batch, self._outgoing = self._outgoing[:MAX_BATCH], self._outgoing[MAX_BATCH:]
            if not await self._post(batch):
                # The outbox resends its own messages; answers to the cloud have no other way.
                answers = [f for f in batch if answer_of(f) is not None]
                self._outgoing[:0] = answers
                if answers:
                    await asyncio.sleep(ANSWER_RETRY_S)

    async def _post(self, batch: list[bytes]) -> bool:
        body = b"[" + b",".join(batch) + b"]"
        response = await self._request(
            "POST",
            self.target.messages_url,
            content=body,
            headers={"Content-Type": "application/json"},
        )
        if response is None:
            return False
        if response.status_code != 200:
            log.warning(
                "poll.post_refused",
                status=response.status_code,
                reason=cloud_reason(response),
                frames=len(batch),
                next="the outbox sends its messages again",
            )
            return False
        try:
            replies = response.json()
        except ValueError:
            replies = None
        if not isinstance(replies, list):
            log.warning("poll.bad_answer", url=self.target.messages_url, next="ignored")
            replies = []
        for frame in batch:
            answer = answer_of(frame)
            if answer is not None:
                etag = self.book.answered(answer[0], acked=answer[1])
                if etag is not None:
                    self._keep(etag, answer[0])
        for reply in replies:
            if isinstance(reply, (dict, list)):
                await self._inbox.put(orjson.dumps(reply))
            elif isinstance(reply, str):
                await self._inbox.put(reply.encode())
        return True

    def _keep(self, etag: str, txn: str) -> None:
        """Keep `etag` for the next start; a disk that refuses costs one 200 after it, only."""
        try:
            self._etag_file.save(self.target.desired_url, etag)
        except OSError as exc:
            log.warning(
                "poll.etag_not_kept",
                etag=etag,
                error=exc.strerror or str(exc),
                next="used until the agent stops; the next start fetches the status again",
            )
            return
        log.info("poll.etag_kept", etag=etag, txn=txn)

    async def _request(
        self, method: str, url: str, *, headers: dict[str, str], content: bytes | None = None
    ) -> httpx.Response | None:
        """One request with the bearer token; after a 401, once more with fresh credentials.
        None when it failed (logged): the caller tries again on its schedule."""
        for attempt in range(2):
            try:
                response = await self._client.request(
                    method, url, content=content, headers={**self.target.headers, **headers}
                )
            except httpx.HTTPError as exc:
                log.warning(
                    "poll.failed",
                    method=method,
                    url=url,
                    error=f"{type(exc).__name__}: {exc}",
                    next="trying again on schedule",
                )
                return None
            if response.status_code != 401 or self._refresh is None or attempt:
                return response
            log.info("poll.unauthorized", url=url, next="discovery")
            try:
                self.target = await self._refresh()
            except AosError as exc:
                log.warning("poll.discovery_failed", error=exc.message, next="trying again later")
                return None
        return None
