"""The WebSocket adapter of the cloud link: it only moves frames, keeps the link alive and
reconnects with backoff. Every protocol rule lives in `session.CloudSession`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence

import websockets
from websockets.asyncio.client import ClientConnection, connect

from ...errors import AosCode, AosError, LinkError, Retry, classify
from ...logs import get_logger
from ...protocol import (
    MAX_MESSAGE_BYTES,
    BlobUrlInfo,
    BlobUrls,
    ErrorInfo,
    Message,
    RequestBlobUrls,
)
from .health import LinkHealth, ReconnectPolicy
from .session import Acked, CloudSession, Dropped, Nacked, Received, Refused

log = get_logger("communication")

# How long the cloud should wait before sending again a message refused for a transient reason.
NACK_RETRY_AFTER_MS = 10_000

MessageHandler = Callable[[Message, float], Awaitable[None]]
ConnectHandler = Callable[[], Awaitable[None]]


class CloudLink:
    """The unit's one connection to its cloud.

    Args:
        url: the cloud's WebSocket URL.
        system_id: this unit's systemId.
        on_message: called for each message from the cloud with the monotonic time it arrived;
            it returns once the message is safe (a desired status stored), then it is acked.
            A raised AosError nacks it with the error.
        on_connect: called each time the link comes up (to send a full status).
        on_disconnect: called each time it goes down (the SMs are told the cloud is away).
        ssl_context: TLS settings for wss URLs.
        reconnect: when to dial again after a failure (`health.ReconnectPolicy`).
        blob_urls_timeout: seconds to wait for a blobUrls answer before asking again.
    """

    def __init__(
        self,
        url: str,
        system_id: str,
        *,
        on_message: MessageHandler,
        on_connect: ConnectHandler,
        on_disconnect: Callable[[], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        reconnect: ReconnectPolicy | None = None,
        blob_urls_timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.session = CloudSession(system_id, time.monotonic)
        self.connected = asyncio.Event()
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._ssl = ssl_context
        self.health = LinkHealth(reconnect or ReconnectPolicy(), clock=time.monotonic)
        self._blob_urls_timeout = blob_urls_timeout
        self._ws: ClientConnection | None = None
        self._waiters: dict[str, asyncio.Future[BlobUrls]] = {}
        self._stopping = False
        self._accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Connect, serve, and reconnect until `close()`, on the health's schedule."""
        while not self._stopping:
            reason = "the cloud closed the connection"
            try:
                async with connect(
                    self.url,
                    ssl=self._ssl,
                    proxy=None,
                    open_timeout=10,
                    ping_interval=20,
                    ping_timeout=20,
                    max_size=MAX_MESSAGE_BYTES,
                ) as ws:
                    await self._serve(ws)
            except asyncio.CancelledError:
                raise
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
                fatal = classify(exc) is Retry.PERMANENT and not isinstance(
                    exc, websockets.exceptions.WebSocketException
                )
                reason = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "link.down",
                    url=self.url,
                    error=reason,
                    fatal=fatal or None,
                    next="reconnecting after backoff",
                )
            finally:
                self._ws = None
                if self.connected.is_set() and self._on_disconnect is not None:
                    self._on_disconnect()
                self.connected.clear()
            if self._stopping:
                break
            delay = self.health.disconnected(reason)
            log.info(
                "link.retry",
                url=self.url,
                delay_s=round(delay, 2),
                failures=self.health.failures,
                health=self.health.health.value,
            )
            await asyncio.sleep(delay)

    async def _serve(self, ws: ClientConnection) -> None:
        self._ws = ws
        self.connected.set()
        self.health.connected()
        log.info("link.up", url=self.url)
        self.session.forget("unitStatus")
        for frame in self.session.pending_frames():
            await ws.send(frame)
        self._spawn(self._on_connect())
        timer = asyncio.create_task(self._resend_loop(ws))
        try:
            async for raw in ws:
                await self._dispatch(ws, raw, time.monotonic())
        finally:
            timer.cancel()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resend_loop(self, ws: ClientConnection) -> None:
        """Resend what is due; woken early by every send and nack, which move deadlines."""
        while True:
            deadline = self.session.next_deadline()
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            frames, gave_up = self.session.due()
            for g in gave_up:
                log.warning(
                    "message.unacknowledged",
                    txn=g.txn,
                    type=g.message_type,
                    next="dropped; a fresh status goes out with the next change",
                )
            for frame in frames:
                await ws.send(frame)

    async def _dispatch(self, ws: ClientConnection, raw: str | bytes, arrived: float) -> None:
        event = self.session.receive(raw)
        if isinstance(event, Refused):
            log.warning(
                "message.refused",
                txn=event.txn,
                path=event.error.path,
                reason=event.error.reason,
                next="nacked; nothing changed",
            )
            await ws.send(event.reply)
        elif isinstance(event, Dropped):
            log.warning(
                "message.dropped",
                txn=event.txn,
                path=event.error.path,
                seen=event.seen,
                reason=event.error.reason,
                next="dropped; not acked, not nacked",
            )
        elif isinstance(event, Acked):
            log.debug("message.acked", txn=event.txn)
        elif isinstance(event, Nacked):
            self._wake.set()
            log.warning(
                "message.nacked",
                txn=event.txn,
                retry_after_s=event.retry_after_s,
                reason=event.error.message if event.error else None,
            )
        elif isinstance(event, Received):
            await self._handle(ws, event, arrived)

    async def _handle(self, ws: ClientConnection, event: Received, arrived: float) -> None:
        message = event.message
        if not self._accepting:
            log.info(
                "message.deferred",
                txn=event.txn,
                type=message.MESSAGE_TYPE,
                reason="shutting down",
                next="not acked; the cloud sends it again",
            )
            return
        log.info("message.received", txn=event.txn, type=message.MESSAGE_TYPE)
        if isinstance(message, BlobUrls):
            waiter = self._waiters.pop(message.correlation_id or "", None)
            if waiter is not None and not waiter.done():
                waiter.set_result(message)
            await ws.send(self.session.ack(event.txn))
            return
        try:
            await self._on_message(message, arrived)
        except AosError as exc:
            await self._refuse(ws, event, message, exc)
            return
        except Exception as exc:
            log.error(
                "message.handler_error",
                txn=event.txn,
                type=message.MESSAGE_TYPE,
                exc_info=True,
                next="nacked; the link stays up",
            )
            await self._refuse(ws, event, message, exc)
            return
        await ws.send(self.session.ack(event.txn))

    async def _refuse(
        self, ws: ClientConnection, event: Received, message: Message, exc: Exception
    ) -> None:
        error = ErrorInfo.from_exception(exc)
        # The retry policy decides whether the cloud should send it again (no space yet, a
        # busy store) or not (it will never be accepted as it is).
        transient = classify(exc) is Retry.TRANSIENT
        retry_after_ms = NACK_RETRY_AFTER_MS if transient else 0
        log.warning(
            "message.rejected",
            txn=event.txn,
            type=message.MESSAGE_TYPE,
            error=error.message,
            retry_after_ms=retry_after_ms or None,
            next="nacked; what runs keeps running"
            + ("; the cloud may send it again" if transient else ""),
        )
        await ws.send(self.session.nack(event.txn, error, retry_after_ms))

    async def send(self, message: Message) -> str | None:
        """Send `message` expecting an ack; returns its txn, or None when the link is down."""
        ws = self._ws
        if ws is None:
            log.debug("message.not_sent", type=message.MESSAGE_TYPE, reason="link down")
            return None
        txn, frame = self.session.send(message)
        self._wake.set()
        try:
            await ws.send(frame)
        except websockets.exceptions.ConnectionClosed:
            return None
        return txn

    async def request_blob_urls(self, digests: Sequence[str]) -> list[BlobUrlInfo]:
        """Ask the cloud where `digests` can be downloaded; waits for the link when it is down.

        Raises:
            LinkError: no answer after three requests.
        """
        for attempt in range(1, 4):
            await self.connected.wait()
            correlation = str(uuid.uuid4())
            waiter: asyncio.Future[BlobUrls] = asyncio.get_running_loop().create_future()
            self._waiters[correlation] = waiter
            try:
                if await self.send(RequestBlobUrls(correlation, tuple(digests))) is None:
                    continue
                answer = await asyncio.wait_for(waiter, self._blob_urls_timeout)
                return list(answer.items)
            except TimeoutError:
                log.warning("blob_urls.timeout", attempt=attempt, digests=len(digests))
            finally:
                self._waiters.pop(correlation, None)
        raise LinkError(f"no blobUrls answer for {len(digests)} digests", code=AosCode.TIMEOUT)

    def stop_accepting(self) -> None:
        """Take no more messages: new ones are left unacknowledged for the cloud to resend."""
        self._accepting = False

    async def close(self) -> None:
        """Stop reconnecting and close the connection."""
        self._stopping = True
        ws = self._ws
        if ws is not None:
            await ws.close()
        for task in list(self._tasks):
            task.cancel()
