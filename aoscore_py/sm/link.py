"""The SM's end of the SM link: one `RegisterSM` stream to its CM over grpc.aio, kept alive with
keepalive pings and opened again with backoff, and the unary `GetBlobsInfos` (docs/sm-protocol.md).

The adapter only moves messages. What goes first on a new stream (`SMInfo`, then
`NodeInstancesStatus`) and what an incoming message means belong to its `LinkHandler`, the SM
service. The link's own few decisions are pure and sit at the top of this file, tested without
sockets: what an address may be (`parse_target`), how long to wait before the next attempt
(`Reconnect`: the backoff is reset only once a stream stayed up `stable_s`, so a CM that takes
each stream and drops it at once is not hammered), how an ended stream reads to an operator
(`describe_end`), and which error a failed `GetBlobsInfos` is (`blob_error`).

Each attempt makes a new channel, so the delay between attempts is ours alone (a kept channel
would add gRPC's own reconnect backoff, up to two minutes, on top). A broken stream is never
reopened by the library: `run` is the SM's reconnect loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from ..backoff import Backoff
from ..errors import AosCode, BlobError, ConfigError
from ..logs import get_logger
from ..nodes.proto import sm_pb2, sm_pb2_grpc

log = get_logger("sm.link")

# Keepalive (docs/sm-protocol.md, "Transport"): a ping every 20 s, even while no message moves,
# so a dead CM is noticed in 30 s rather than at the TCP timeout. gRPC's client stops pinging
# after two pings without data unless `max_pings_without_data` is 0: an idle node would then
# lose its keepalive after 40 s.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)

STABLE_S = 30.0
"""How long a stream must stay up before the reconnect backoff starts again from its start."""

BLOBS_TIMEOUT_S = 30.0
"""How long a `GetBlobsInfos` may take."""


def reconnect_backoff() -> Backoff:
    """The SM's reconnect schedule: 1 s doubling to 15 s, +-30 % jitter (a fleet of SMs whose
    CM restarted does not come back in step)."""
    return Backoff(initial=1.0, factor=2.0, cap=15.0, jitter=0.3)


# -- pure decisions ------------------------------------------------------------------------------


def parse_target(address: str) -> tuple[str, int]:
    """The CM's `HOST:PORT` (`[::1]:PORT` for IPv6) as (host, port).

    Raises:
        ConfigError: not HOST:PORT with a port in 1..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ConfigError(f"CM address {address!r}: expected HOST:PORT, such as 127.0.0.1:8090")
    return host, int(port)


@dataclass
class Reconnect:
    """How long to wait before the next attempt to open a stream.

    Args:
        backoff: the delays; each attempt that did not hold counts one more failure.
        stable_s: a stream that stayed up this long resets the backoff.
    """

    backoff: Backoff = field(default_factory=reconnect_backoff)
    stable_s: float = STABLE_S

    def delay(self, up_s: float | None) -> float:
        """The wait after an attempt whose stream stayed up `up_s` seconds (None: it never
        came up)."""
        if up_s is not None and up_s >= self.stable_s:
            self.backoff.reset()
        return self.backoff.next()


@dataclass(frozen=True)
class StreamEnd:
    """How an ended stream reads in the log: level, event, why."""

    level: str
    event: str
    why: str


def describe_end(code: grpc.StatusCode | None, details: str, error: str = "") -> StreamEnd:
    """What an operator should read about a stream that ended with `code` and `details` (or,
    without a status, with `error`)."""
    details = details or error or "no details"
    lowered = details.lower()
    if code == grpc.StatusCode.OK:
        return StreamEnd("info", "link.closed", f"the CM ended the stream: {details}")
    if code == grpc.StatusCode.ABORTED:
        if "replaced" in lowered:
            return StreamEnd(
                "warning",
                "link.replaced",
                f"the CM took a newer stream of this node instead ({details}); two SMs with "
                "one node id take turns",
            )
        return StreamEnd("warning", "link.aborted", f"the CM aborted the stream: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return StreamEnd("error", "link.refused", f"the CM refused this SM's messages: {details}")
    if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        return StreamEnd(
            "error",
            "link.refused",
            f"the CM refused this node: {details} (check --node-id against the node's certificate)",
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        if "stopping" in lowered:
            return StreamEnd("info", "link.cm_stopping", f"the CM ended the stream: {details}")
        if any(word in lowered for word in ("handshake", "ssl", "certificate", "tls")):
            return StreamEnd(
                "error",
                "link.tls_failed",
                f"TLS with the CM failed: {details} (check --ca/--cert/--key, and that the "
                "CM's certificate names the host dialled)",
            )
        return StreamEnd("warning", "link.unreachable", f"the CM cannot be reached: {details}")
    name = code.name if code is not None else "no status"
    return StreamEnd("warning", "link.down", f"the stream ended ({name}): {details}")


def blob_error(code: grpc.StatusCode | None, details: str, digests: Sequence[str]) -> BlobError:
    """The error of a failed `GetBlobsInfos`: notFound when the CM lacks a blob, invalidArgument
    when it refused a digest, else failed (worth another try)."""
    what = f"GetBlobsInfos for {len(digests)} blob(s)"
    if code == grpc.StatusCode.NOT_FOUND:
        return BlobError(f"{what}: the CM does not hold it: {details}", code=AosCode.NOT_FOUND)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BlobError(f"{what}: refused by the CM: {details}", code=AosCode.INVALID_ARGUMENT)
    name = code.name if code is not None else "no status"
    return BlobError(f"{what} failed ({name}): {details}")


# -- the adapter ---------------------------------------------------------------------------------


class LinkHandler(Protocol):
    """What the link asks of the SM it serves."""

    async def hello(self) -> Sequence[sm_pb2.SMOutgoingMessages]:
        """The messages that open a new stream, `SMInfo` first. Raising aborts the attempt (it
        is retried with backoff): an SM that cannot say what it runs does not register."""
        ...

    def received(self, message: sm_pb2.SMIncomingMessages, stream: int) -> None:
        """A message from the CM on stream number `stream`; must not block."""
        ...


@dataclass
class _Stream:
    number: int
    queue: asyncio.Queue[sm_pb2.SMOutgoingMessages] = field(default_factory=asyncio.Queue)


class SmLink:
    """The SM's link to its CM: a `RegisterSM` stream, reopened until `close`.

    Args:
        target: the CM's `HOST:PORT`.
        credentials: mutual-TLS channel credentials (`iam.tls.grpc_channel_credentials`);
            None dials plaintext (the caller checked the host is loopback).
        reconnect: the delays between attempts.
        options: the channel's options (keepalive).
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        reconnect: Reconnect | None = None,
        options: Sequence[tuple[str, int | str]] = CHANNEL_OPTIONS,
    ) -> None:
        parse_target(target)
        self.target = target
        self._credentials = credentials
        self._reconnect = reconnect or Reconnect()
        self._options = tuple(options)
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall | None = None
        self._stream: _Stream | None = None
        self._numbers = 0
        self._closing = False
        self._wake = asyncio.Event()
        self.streams = 0  # streams opened so far (for tests and logs)

    @property
    def connected(self) -> bool:
        """Whether a stream is open and its opening messages were written."""
        return self._stream is not None

    def send(self, message: sm_pb2.SMOutgoingMessages, *, stream: int | None = None) -> bool:
        """Queue `message` on the open stream; never blocks.

        Args:
            stream: only on this stream (an answer belongs to the stream its request came on).

        Returns:
            Whether it was queued: False while no stream is open, or when `stream` has ended.
        """
        current = self._stream
        if current is None or (stream is not None and stream != current.number):
            return False
        current.queue.put_nowait(message)
        return True

    async def get_blobs_infos(self, digests: Sequence[str]) -> list[str]:
        """One URL per digest, in the order asked, into the CM's blob server (the blob cache's
        `BlobInfoSource`).

        Raises:
            BlobError: notFound when the CM lacks a digest, invalidArgument when it refused
                one, failed when the link is down or the call failed.
        """
        channel = self._channel
        if channel is None:
            raise BlobError(f"GetBlobsInfos: not connected to the CM at {self.target}")
        stub = sm_pb2_grpc.SMServiceStub(channel)
        try:
            answer = await stub.GetBlobsInfos(
                sm_pb2.BlobsInfosRequest(digests=list(digests)), timeout=BLOBS_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            raise blob_error(exc.code(), exc.details() or "", digests) from None
        except grpc.aio.UsageError as exc:  # the channel closed under the call
            raise blob_error(None, str(exc), digests) from None
        return list(answer.urls)

    async def run(self, handler: LinkHandler) -> None:
        """Open a stream, serve it, and open another after a backoff, until `close`.

        Args:
            handler: opens each stream and takes what the CM sends. (Given here, not to the
                constructor, because the handler's blob cache asks this link for URLs.)
        """
        while not self._closing:
            up_s, end = await self._attempt(handler)
            if self._closing:
                break
            delay = self._reconnect.delay(up_s)
            getattr(log, end.level)(
                end.event,
                cm=self.target,
                reason=end.why,
                up_s=round(up_s, 1) if up_s is not None else None,
                next=f"reconnecting in {delay:.1f} s",
            )
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        log.info("link.stopped", cm=self.target)

    async def close(self) -> None:
        """End the stream (the CM sees this SM go away) and stop `run`."""
        self._closing = True
        self._wake.set()
        if self._call is not None:
            self._call.cancel()

    def _new_channel(self) -> grpc.aio.Channel:
        if self._credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self._options)
        return grpc.aio.secure_channel(self.target, self._credentials, options=self._options)

    async def _attempt(self, handler: LinkHandler) -> tuple[float | None, StreamEnd]:
        """One stream from its opening to its end: how long it was up, and how it ended."""
        channel = self._new_channel()
        call: grpc.aio.StreamStreamCall | None = None
        tasks: list[asyncio.Task[None]] = []
        up_since: float | None = None
        error = ""
        try:
            call = sm_pb2_grpc.SMServiceStub(channel).RegisterSM()
            self._channel, self._call = channel, call
            opening = await handler.hello()
            for message in opening:
                await call.write(message)
            self._numbers += 1
            stream = _Stream(self._numbers)
            self._stream = stream
            self.streams += 1
            up_since = time.monotonic()
            log.info(
                "link.up",
                cm=self.target,
                stream=stream.number,
                tls=self._credentials is not None,
                next="serving the CM's requests",
            )
            tasks = [
                asyncio.create_task(self._read(call, handler, stream.number), name="sm-link-read"),
                asyncio.create_task(self._write(call, stream), name="sm-link-write"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    error = f"{type(exc).__name__}: {exc}"
        except grpc.aio.AioRpcError:
            pass  # the call's status says why
        except asyncio.CancelledError:
            # `close` cancelled the call under a write or read: the end asked for. A
            # cancellation of this task itself goes on up.
            task = asyncio.current_task()
            if not self._closing or (task is not None and task.cancelling()):
                raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._stream = None
            self._channel = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            code, details = None, ""
            if call is not None:
                if not call.done():
                    call.cancel()
                code, details = await _status(call)
                self._call = None
                if error and code == grpc.StatusCode.CANCELLED:
                    code, details = None, ""  # cancelled here, because of `error`
            await channel.close()
        up_s = None if up_since is None else time.monotonic() - up_since
        return up_s, describe_end(code, details, error)

    async def _read(
        self, call: grpc.aio.StreamStreamCall, handler: LinkHandler, number: int
    ) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            try:
                handler.received(message, number)
            except Exception:
                case = message.WhichOneof("SMIncomingMessage")
                log.error("link.message_failed", case=case, exc_info=True)

    async def _write(self, call: grpc.aio.StreamStreamCall, stream: _Stream) -> None:
        while True:
            message = await stream.queue.get()
            await call.write(message)


async def _status(call: grpc.aio.StreamStreamCall) -> tuple[grpc.StatusCode | None, str]:
    try:
        return await call.code(), await call.details() or ""
    except asyncio.CancelledError:
        return grpc.StatusCode.CANCELLED, "cancelled"
