"""The WebSocket adapter of the cloud link: it only moves frames, keeps the link alive and
reconnects with backoff. Every protocol rule lives in `session.CloudSession`; what waits for an
ack, and when it is sent again, in `outbox.Outbox`; where to dial, in a `targets.TargetSource`.

Polling (`poll.py`) is the fallback transport: a channel with the WebSocket's `send` and async
iteration, so `_serve` drives both. `--transport poll` polls only; `auto` polls while no
WebSocket has been up for `poll_after_s` and keeps redialling the WebSocket on its backoff, and
stops polling as soon as one is up. A desired status pushed over the WebSocket resets the poll
timer. Polling does not touch the WebSocket's health (its backoff and circuit).

Dialling: each URL in turn; a 401 asks the source for new credentials (discovery) once; any
other failure tries the next URL, and when all failed the source discovers again after the
backoff. A certificate the unit does not trust is logged as such and retried only on the slow
schedule (the circuit's open period), since no quick retry mends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol

import websockets
from websockets.asyncio.client import connect

from ... import heap
from ...errors import AosCode, AosError, LinkError, Retry, certificate_failure, classify
from ...logs import get_logger
from ...protocol import (
    MAX_MESSAGE_BYTES,
    BlobUrlInfo,
    BlobUrls,
    DesiredStatus,
    ErrorInfo,
    Message,
    RequestBlobUrls,
)
from .health import LinkHealth, ReconnectPolicy
from .outbox import Outbox
from .poll import EtagFile, PollSchedule, PollSettings, PollTarget, Transport, fallback_wait
from .pollchannel import PollChannel
from .session import Acked, CloudSession, Dropped, Nacked, Received, Refused
from .targets import Target, TargetSource

log = get_logger("communication")

# How long the cloud should wait before sending again a message refused for a transient reason.
NACK_RETRY_AFTER_MS = 10_000

ACK_BATCH_S = 0.05
"""How long acknowledged messages wait to be deleted together (see `_delete_acked`)."""

MessageHandler = Callable[[Message, float], Awaitable[None]]
ConnectHandler = Callable[[], Awaitable[None]]


class Channel(Protocol):
    """What `_serve` needs of a connection: a WebSocket, or a `poll.PollChannel`."""

    async def send(self, message: bytes) -> None: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def close(self) -> None: ...


class CloudLink:
    """The unit's one connection to its cloud.

    Args:
        targets: where to dial (`targets.StaticTargets` for a fixed URL, or discovery).
        system_id: this unit's systemId.
        outbox: where every message to the cloud waits for its ack (`outbox.Outbox`).
        on_message: called for each message from the cloud with the monotonic time it arrived;
            it returns once the message is safe (a desired status stored), then it is acked.
            A raised AosError nacks it with the error.
        on_connect: called each time the link comes up (to send a full status).
        on_disconnect: called each time it goes down (the SMs are told the cloud is away).
        reconnect: when to dial again after a failure (`health.ReconnectPolicy`).
        blob_urls_timeout: seconds to wait for a blobUrls answer before asking again.
        boot_id: this process's boot (the unit statuses' `bootId`), which every message the
            link numbers carries too; a new one when not given.
        ping_interval_s: keepalive pings; a link that misses one answer for `ping_interval_s`
            more is closed (its closing handshake given at most 10 s more), so a dead link is
            found in under 50 s by default (ping interval, ping timeout, close timeout). The
            opening handshake may take three times as long (at least 10 s): TCP, TLS and the
            upgrade each cost a round trip, which is what a raised keepalive is for.
        poll: polling as a transport (`poll.PollSettings`); None: WebSocket only.
    """

    def __init__(
        self,
        targets: TargetSource,
        system_id: str,
        outbox: Outbox,
        *,
        on_message: MessageHandler,
        on_connect: ConnectHandler,
        on_disconnect: Callable[[], None] | None = None,
        reconnect: ReconnectPolicy | None = None,
        blob_urls_timeout: float = 30.0,
        boot_id: str | None = None,
        ping_interval_s: float = 20.0,
        poll: PollSettings | None = None,
    ) -> None:
        self.targets = targets
        self.url: str | None = None
        self.session = CloudSession(system_id)
        self.boot_id = boot_id or uuid.uuid4().hex
        self._requests = 0  # requestBlobUrls of this boot, numbered apart from statuses
        self.outbox = outbox
        self.connected = asyncio.Event()
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self.health = LinkHealth(reconnect or ReconnectPolicy(), clock=time.monotonic)
        self._blob_urls_timeout = blob_urls_timeout
        self._ping_s = ping_interval_s
        self._ws: Channel | None = None
        self._poll = poll
        self._schedule = PollSchedule(poll.interval_s) if poll is not None else None
        self._poll_channel: PollChannel | None = None
        self._poll_wss: Target | None = None  # the wss target whose token polling uses
        self._poll_done = asyncio.Event()
        self._poll_done.set()
        self._ws_open = False
        self._ws_seen = time.monotonic()  # when the WebSocket was last up (or the link started)
        self._ws_changed = asyncio.Event()
        self.transport: str | None = None
        self._last_transport: str | None = None
        self._waiters: dict[str, asyncio.Future[BlobUrls]] = {}
        self._stopping = False
        self._accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._acks = asyncio.Event()

    async def run(self) -> None:
        """Connect, serve, and reconnect until `close()`, on the health's schedule; poll
        instead, or meanwhile, as `poll` says."""
        poll = self._poll
        self._ws_seen = time.monotonic()
        if poll is not None and poll.transport is Transport.POLL:
            while not self._stopping:
                await self._poll_session()
            return
        fallback = None
        if poll is not None and poll.transport is Transport.AUTO:
            fallback = asyncio.create_task(self._fallback(poll), name="poll-fallback")
        try:
            await self._run_ws()
        finally:
            if fallback is not None:
                fallback.cancel()
                await asyncio.gather(fallback, return_exceptions=True)

    async def _run_ws(self) -> None:
        while not self._stopping:
            reason, slow = await self._dial_all()
            if self._stopping:
                break
            delay = self.health.disconnected(reason, slow=slow)
            # What the dropped connection held (up to a 16 MiB inflated frame) goes back to
            # the system, so a storm of short connections leaves no lasting footprint.
            heap.release()
            log.info(
                "link.retry",
                url=self.url,
                delay_s=round(delay, 2),
                failures=self.health.failures,
                health=self.health.health.value,
                outbox=self.outbox.depth,
            )
            await asyncio.sleep(delay)

    async def _dial_all(self) -> tuple[str, bool]:
        """Try each URL in turn (after a 401, discovery once more); why the last one ended,
        and whether to wait on the slow schedule (a certificate we do not trust)."""
        reason, slow = "the cloud closed the connection", False
        rediscovered = False
        try:
            targets = await self.targets.targets()
        except AosError as exc:
            slow = certificate_failure(exc)
            log.warning(
                "link.discovery_failed",
                error=exc.message,
                certificate=slow or None,
                next="retrying on the slow schedule" if slow else "retrying after backoff",
            )
            return f"discovery: {exc.message}", slow
        while targets:
            target = targets.pop(0)
            status = await self._dial(target)
            if status is None:
                return "the cloud closed the connection", False
            reason, slow, unauthorized = status
            if self._stopping:
                break
            if unauthorized and not rediscovered:
                self.targets.unauthorized(target)
                rediscovered = True
                try:
                    targets = await self.targets.targets()
                except AosError as exc:
                    return f"discovery: {exc.message}", certificate_failure(exc)
            elif unauthorized:
                self.targets.unauthorized(target)
        else:
            self.targets.exhausted()
        return reason, slow

    async def _dial(self, target: Target) -> tuple[str, bool, bool] | None:
        """Serve one connection to `target`; (reason, slow, unauthorized) when it failed or
        ended, None when it was served and the cloud closed it."""
        self.url = target.url
        try:
            async with connect(
                target.url,
                ssl=target.ssl_context,
                additional_headers=dict(target.headers),
                proxy=None,
                open_timeout=max(10.0, 3 * self._ping_s),
                ping_interval=self._ping_s,
                ping_timeout=self._ping_s,
                close_timeout=min(10.0, self._ping_s),
                max_size=MAX_MESSAGE_BYTES,
            ) as ws:
                self._ws_open = True
                await self._stop_polling()
                if self.health.failures:
                    heap.release()  # what the failed dials before this one left behind
                self.health.connected()
                await self._serve(ws, Transport.WS)
            return None
        except asyncio.CancelledError:
            raise
        except ssl.SSLCertVerificationError as exc:
            reason = f"certificate verification failed: {exc.verify_message or exc}"
            log.error(
                "link.certificate_refused",
                url=target.url,
                error=reason,
                next="the cloud's certificate is not trusted; retrying on the slow schedule",
            )
            return reason, True, False
        except websockets.exceptions.InvalidStatus as exc:
            code = exc.response.status_code
            reason = f"the cloud answered HTTP {code}"
            log.warning(
                "link.refused",
                url=target.url,
                status=code,
                next="discovering again" if code == 401 else "trying the next URL",
            )
            return reason, False, code == 401
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            fatal = classify(exc) is Retry.PERMANENT and not isinstance(
                exc, websockets.exceptions.WebSocketException
            )
            reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "link.down",
                url=target.url,
                error=reason,
                fatal=fatal or None,
                outbox=self.outbox.depth,
                next="trying the next URL, then backing off",
            )
            return reason, False, False
        finally:
            if self._ws_open:  # this WebSocket was up (a failed dial leaves polling alone)
                self._ws_open = False
                self._ws_seen = time.monotonic()
                self._ws_changed.set()
                self._down()

    def _down(self) -> None:
        """The connection (WebSocket or polling) ended: the outbox only stores, the SMs learn."""
        self._ws = None
        self.transport = None
        if self.connected.is_set():
            self.outbox.disconnected()
            if self._on_disconnect is not None:
                self._on_disconnect()
        self.connected.clear()

    # polling

    async def _fallback(self, poll: PollSettings) -> None:
        """`auto`: poll while no WebSocket has been up for `poll.after_s`, until one is."""
        while not self._stopping:
            wait = fallback_wait(time.monotonic(), self._ws_seen, poll.after_s, ws_up=self._ws_open)
            if wait is None or wait > 0:
                self._ws_changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ws_changed.wait(), wait)
                continue
            log.info(
                "link.fallback",
                since_ws_s=round(time.monotonic() - self._ws_seen, 1),
                poll_after_s=poll.after_s,
                next="polling until the WebSocket is up",
            )
            await self._poll_session()

    async def _poll_session(self) -> None:
        """Serve polling until the channel is closed (a WebSocket came up, or `close()`)."""
        poll = self._poll
        assert poll is not None and self._schedule is not None, "polling is not configured"
        try:
            target = await self._new_poll_target()
        except AosError as exc:
            log.warning(
                "link.poll_unavailable",
                error=exc.message,
                next=f"trying again in {poll.interval_s:g} s",
            )
            self._ws_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ws_changed.wait(), poll.interval_s)
            return
        if self._ws_open or self._stopping:
            return
        channel = PollChannel(
            target, self._schedule, EtagFile(poll.etag_path), refresh=self._refresh_poll_target
        )
        self._poll_channel = channel
        self._poll_done.clear()
        self.url = target.desired_url
        try:
            await self._serve(channel, Transport.POLL)
        finally:
            await channel.close()
            self._poll_channel = None
            self._down()
            self._poll_done.set()

    async def _new_poll_target(self) -> PollTarget:
        """The poll endpoints with the credentials the target source gives (discovery).

        Raises:
            AosError: no credentials can be had now.
        """
        poll = self._poll
        assert poll is not None, "polling is not configured"
        targets = await self.targets.targets()
        if not targets:
            raise LinkError("the target source gave no credentials to poll with")
        self._poll_wss = targets[0]
        return PollTarget.of(
            poll.base_url, self.session.system_id, targets[0].headers, targets[0].ssl_context
        )

    async def _refresh_poll_target(self) -> PollTarget:
        """The cloud refused the token (401): discovery again."""
        if self._poll_wss is not None:
            self.targets.unauthorized(self._poll_wss)
        return await self._new_poll_target()

    async def _stop_polling(self) -> None:
        """The WebSocket is up: end the polling session before serving the WebSocket."""
        channel = self._poll_channel
        if channel is not None:
            await channel.close()
        await self._poll_done.wait()

    async def _serve(self, ws: Channel, transport: str) -> None:
        self._ws = ws
        self.transport = transport
        self.outbox.connected()
        self.connected.set()
        if transport != self._last_transport:
            log.info(
                "link.transport",
                transport=transport,
                previous=self._last_transport,
                url=self.url,
            )
            self._last_transport = transport
        log.info(
            "link.up",
            url=self.url,
            transport=transport,
            outbox=self.outbox.depth,
            mode=self.outbox.mode.value,
        )
        await self._flush(ws)
        self._spawn(self._on_connect())
        timer = asyncio.create_task(self._resend_loop(ws))
        deleter = asyncio.create_task(self._delete_acked())
        try:
            async for raw in ws:
                await self._dispatch(ws, raw, time.monotonic())
        finally:
            timer.cancel()
            deleter.cancel()
            self._flush_acked()

    async def _flush(self, ws: Channel | None = None) -> None:
        """Send what the outbox says is due, in its order (one sender at a time), on `ws`, or
        on the current connection read under the lock (so frames never go to one that ended
        meanwhile, where they would wait out the ack timeout)."""
        async with self._send_lock:
            ws = ws or self._ws
            if ws is None:
                return
            for frame in self.outbox.due():
                await ws.send(frame)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resend_loop(self, ws: Channel) -> None:
        """Send what is due; woken early by every send, ack and nack, which move deadlines."""
        while True:
            deadline = self.outbox.next_deadline()
            timeout = 1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            await self._flush(ws)

    def _flush_acked(self) -> None:
        """Delete the acknowledged messages now; a store that refuses (a full disk) keeps them
        queued for the next commit, and at worst one goes out again, which the cloud records
        once: never a reason to take the link down."""
        try:
            self.outbox.flush_acked()
        except AosError as exc:
            log.warning(
                "outbox.delete_failed",
                error=exc.message,
                next="deleted with the next commit; a resend the cloud records once",
            )

    async def _delete_acked(self) -> None:
        """Delete acknowledged messages from the store in batches: `ACK_BATCH_S` after an ack,
        unless a new message's commit took them along first (one commit for both)."""
        while True:
            await self._acks.wait()
            await asyncio.sleep(ACK_BATCH_S)
            self._acks.clear()
            self._flush_acked()

    async def _dispatch(self, ws: Channel, raw: str | bytes, arrived: float) -> None:
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
            if self.outbox.acked(event.txn):
                self._wake.set()  # the window has room for the next one
                self._acks.set()
            log.debug("message.acked", txn=event.txn)
        elif isinstance(event, Nacked):
            self.outbox.nacked(event.txn, event.retry_after_s)
            self._wake.set()
            log.warning(
                "message.nacked",
                txn=event.txn,
                retry_after_s=event.retry_after_s,
                reason=event.error.message if event.error else None,
            )
        elif isinstance(event, Received):
            await self._handle(ws, event, arrived)

    async def _handle(self, ws: Channel, event: Received, arrived: float) -> None:
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
        if (
            isinstance(message, DesiredStatus)
            and self._schedule is not None
            and ws is not self._poll_channel
        ):
            self._schedule.pushed(arrived)
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

    async def _refuse(self, ws: Channel, event: Received, message: Message, exc: Exception) -> None:
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

    async def send(self, message: Message, *, replace_types: Sequence[str] = ()) -> str:
        """Queue `message` in the outbox (committed), and send it now if the link is up and
        nothing queued is ahead of it; returns its txn. `replace_types`: queued messages of
        these types are folded into this one (see `outbox.py`)."""
        txn, frame = self.session.send(message)
        self.outbox.append(
            txn,
            message.MESSAGE_TYPE,
            frame,
            seq=getattr(message, "seq", None),
            replace_types=replace_types,
        )
        if self._ws is not None:
            with contextlib.suppress(websockets.exceptions.ConnectionClosed):
                await self._flush()
        return txn

    def room_for(self, message: Message) -> bool:
        """Whether `message` fits in the outbox without pushing anything out."""
        return self.outbox.room_for(len(self.session.frame(message)))

    async def request_blob_urls(self, digests: Sequence[str]) -> list[BlobUrlInfo]:
        """Ask the cloud where `digests` can be downloaded; waits for the link when it is down.

        An answer to any of the requests made is taken: on a link whose round trip is longer
        than `blob_urls_timeout` (a cellular gateway adding 30 s each way), the answer to the
        first request arrives after the second was sent.

        Raises:
            LinkError: no answer after three requests.
        """
        answer: asyncio.Future[BlobUrls] = asyncio.get_running_loop().create_future()
        asked: list[str] = []
        try:
            for attempt in range(1, 4):
                await self.connected.wait()
                correlation = str(uuid.uuid4())
                self._waiters[correlation] = answer
                asked.append(correlation)
                self._requests += 1
                await self.send(
                    RequestBlobUrls(
                        correlation, tuple(digests), boot_id=self.boot_id, seq=self._requests
                    )
                )
                try:
                    got = await asyncio.wait_for(asyncio.shield(answer), self._blob_urls_timeout)
                    return list(got.items)
                except TimeoutError:
                    log.warning("blob_urls.timeout", attempt=attempt, digests=len(digests))
        finally:
            for correlation in asked:
                self._waiters.pop(correlation, None)
        raise LinkError(f"no blobUrls answer for {len(digests)} digests", code=AosCode.TIMEOUT)

    def stop_accepting(self) -> None:
        """Take no more messages: new ones are left unacknowledged for the cloud to resend."""
        self._accepting = False

    async def close(self) -> None:
        """Stop reconnecting and close the connection (acks taken are stored first)."""
        self._stopping = True
        self._ws_changed.set()
        self._flush_acked()
        ws = self._ws
        if ws is not None:
            await ws.close()
        for task in list(self._tasks):
            task.cancel()
