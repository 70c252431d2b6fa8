"""The CM's gRPC server for the SM link: serves AosCore's `SMService` and only moves messages.

Every rule of the link lives in `nodemanager` (which stream is whose, what a message changes,
when a node is in error); this adapter reads each `RegisterSM` stream into a `NodeLink`, writes
what the node's outbox holds, answers `GetBlobsInfos` from the CM's blob server, and wakes the
node manager when a node timeout falls due (docs/sm-protocol.md).

Transport: mutual TLS by default (server credentials from `iam.tls.grpc_server_credentials`);
plaintext only when `insecure` and bound to a loopback address. With a client certificate, the
node id an SM claims in `SMInfo` must be its certificate's common name (the unit PKI issues node
certificates so), so a node cannot take over another's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from ...errors import AosCode, AosError, ConfigError, ProtocolError
from ...iam.tls import check_insecure_host
from ...logs import get_logger
from ...nodes.proto import sm_pb2, sm_pb2_grpc
from .nodemanager import NodeLink, NodeManager

log = get_logger("launcher.smserver")

BlobUrls = Callable[[Sequence[str]], Sequence[str] | Awaitable[Sequence[str]]]
"""digests -> one URL per digest, in order, into the CM's blob server. A digest the CM does not
hold raises an `AosError` with code notFound naming it (the SM gets NOT_FOUND)."""

# Keepalive (docs/sm-protocol.md, "Transport"): an SM pings every 20 s, even between messages;
# a server that allows less answers GOAWAY too_many_pings and the link flaps. The CM pings too,
# so a node whose SM died without closing is noticed in 30 s, not at the TCP timeout.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A second CM on the same port must fail to start, not share the SMs with the first.
    ("grpc.so_reuseport", 0),
)

# How long `stop` lets calls in flight finish before they are cancelled.
SHUTDOWN_GRACE_S = 1.0

# An errorInfo code from `blob_urls` -> the status the SM gets.
_BLOB_STATUS = {
    AosCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    AosCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    AosCode.NOT_SUPPORTED: grpc.StatusCode.INVALID_ARGUMENT,
    AosCode.INVALID_CHECKSUM: grpc.StatusCode.INVALID_ARGUMENT,
}


def split_address(address: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:PORT` for IPv6) as (host, port).

    Raises:
        ConfigError: not HOST:PORT with a port in 0..65535.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"SM link address {address!r}: expected HOST:PORT")
    return host, int(port)


@dataclass(frozen=True)
class _Close:
    reason: str


@dataclass
class _Stream:
    """One `RegisterSM` call: its outbox, its link once registered, how it ends."""

    peer: str
    queue: asyncio.Queue[sm_pb2.SMIncomingMessages | _Close] = field(default_factory=asyncio.Queue)
    link: NodeLink | None = None
    end: tuple[grpc.StatusCode, str] | None = None
    closed: bool = False

    # The node manager's `Outbox`.
    def put(self, message: sm_pb2.SMIncomingMessages) -> None:
        if not self.closed:
            self.queue.put_nowait(message)

    def close(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(_Close(reason))


class _Servicer(sm_pb2_grpc.SMServiceServicer):
    def __init__(self, server: SMServer) -> None:
        self._server = server

    async def RegisterSM(
        self,
        request_iterator: AsyncIterator[sm_pb2.SMOutgoingMessages],
        context: grpc.aio.ServicerContext,
    ) -> None:
        stream = _Stream(context.peer())
        reader = asyncio.create_task(self._read(request_iterator, context, stream))
        writer = asyncio.create_task(self._write(context, stream))
        try:
            await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # A cancelled reader receives nothing more, so the node is marked away at once,
            # before any await: a second cancellation of this handler cannot skip it.
            reader.cancel()
            writer.cancel()
            if stream.link is not None:
                stream.link.close()
            else:
                stream.close("stream ended")
            await asyncio.gather(reader, writer, return_exceptions=True)
        if stream.end is not None:
            await context.abort(*stream.end)

    async def _read(
        self,
        request_iterator: AsyncIterator[sm_pb2.SMOutgoingMessages],
        context: grpc.aio.ServicerContext,
        stream: _Stream,
    ) -> None:
        async for message in request_iterator:
            if stream.link is None:
                stream.end = self._register(message, context, stream)
                if stream.end is not None:
                    code, why = stream.end
                    log.warning("sm.refused", peer=stream.peer, status=code.name, reason=why)
                    return
                continue
            try:
                stream.link.receive(message)
            except ProtocolError as exc:
                log.warning(
                    "sm.message_refused",
                    node=stream.link.node.node_id,
                    reason=exc.message,
                    next="skipped; nothing changed and the stream stays up",
                )
            except Exception:
                log.error("sm.message_failed", node=stream.link.node.node_id, exc_info=True)
        log.info("sm.stream_ended", peer=stream.peer, by="sm")

    def _register(
        self, first: sm_pb2.SMOutgoingMessages, context: grpc.aio.ServicerContext, stream: _Stream
    ) -> tuple[grpc.StatusCode, str] | None:
        """Register the stream whose first message is `first`; or why it is refused."""
        names = context.auth_context().get("x509_common_name")
        claimed = first.sm_info.node_id
        mismatch = names and names[0].decode() != claimed and first.HasField("sm_info")
        if self._server.check_node_name and mismatch:
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"SMInfo.node_id {claimed!r} is not the client certificate's "
                f"common name {names[0].decode()!r}",
            )
        try:
            stream.link = self._server.nodes.register(first, stream, peer=stream.peer)
        except ProtocolError as exc:
            return grpc.StatusCode.INVALID_ARGUMENT, exc.message
        return None

    async def _write(self, context: grpc.aio.ServicerContext, stream: _Stream) -> None:
        while True:
            item = await stream.queue.get()
            if isinstance(item, _Close):
                code = (
                    grpc.StatusCode.UNAVAILABLE
                    if self._server.stopping
                    else grpc.StatusCode.ABORTED
                )
                stream.end = (code, item.reason)
                return
            try:
                await context.write(item)
            except Exception as exc:
                log.info("sm.write_failed", peer=stream.peer, error=f"{type(exc).__name__}: {exc}")
                return

    async def GetBlobsInfos(
        self, request: sm_pb2.BlobsInfosRequest, context: grpc.aio.ServicerContext
    ) -> sm_pb2.BlobsInfos:
        digests = list(request.digests)
        try:
            urls = self._server.blob_urls(digests)
            if inspect.isawaitable(urls):
                urls = await urls
            urls = list(urls)  # type: ignore[arg-type]
        except AosError as exc:
            status = _BLOB_STATUS.get(exc.code, grpc.StatusCode.UNAVAILABLE)
            log.info("blobs.refused", peer=context.peer(), status=status.name, reason=exc.message)
            await context.abort(status, exc.message)
        except Exception as exc:
            log.error("blobs.failed", peer=context.peer(), digests=len(digests), exc_info=True)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        if len(urls) != len(digests):
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{len(urls)} URLs for {len(digests)} digests"
            )
        log.debug("blobs.answered", peer=context.peer(), digests=len(digests))
        return sm_pb2.BlobsInfos(urls=urls)


class SMServer:
    """Serves `SMService` (the SMs' `RegisterSM` streams and `GetBlobsInfos`) for the CM.

    Args:
        nodes: the node manager every stream reports to.
        blob_urls: digests -> URLs into the CM's blob server (see `BlobUrls`).
        address: `HOST:PORT` to listen on (port 0 picks one: `port` after `start`).
        credentials: gRPC server credentials (mutual TLS with the unit's CA).
        insecure: plaintext instead; only on a loopback address.
        check_node_name: refuse an SM whose client certificate's common name is not the node
            id it claims (off for an SM whose certificates are not the unit PKI's).

    Raises:
        ConfigError: a malformed address, neither or both of credentials and insecure, or
            insecure on an address that is not loopback (the message names it).
    """

    def __init__(
        self,
        nodes: NodeManager,
        blob_urls: BlobUrls,
        address: str,
        *,
        credentials: grpc.ServerCredentials | None = None,
        insecure: bool = False,
        check_node_name: bool = True,
    ) -> None:
        host, _ = split_address(address)
        if (credentials is None) == (not insecure):
            raise ConfigError(
                f"SM link {address}: give server credentials (mutual TLS) or insecure, "
                "not both or neither"
            )
        if insecure:
            check_insecure_host(host, f"SM link {address}")
        self.nodes = nodes
        self.blob_urls = blob_urls
        self.address = address
        self.check_node_name = check_node_name
        self.port = 0
        self.stopping = False
        self._credentials = credentials
        self._server: grpc.aio.Server | None = None
        self._timer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listen (inside the running loop, as grpc.aio wants).

        Raises:
            ConfigError: the address cannot be bound.
        """
        server = grpc.aio.server(options=SERVER_OPTIONS)
        sm_pb2_grpc.add_SMServiceServicer_to_server(_Servicer(self), server)
        try:
            if self._credentials is None:
                port = server.add_insecure_port(self.address)
            else:
                port = server.add_secure_port(self.address, self._credentials)
        except RuntimeError as exc:
            port, error = 0, str(exc)
        else:
            error = "no port bound"
        if not port:
            raise ConfigError(f"SM link: cannot listen on {self.address}: {error}")
        await server.start()
        self._server, self.port = server, port
        self._timer = asyncio.create_task(self._expire_loop())
        log.info(
            "smserver.listening",
            address=self.address,
            port=port,
            tls=self._credentials is not None,
            next="waiting for SMs",
        )

    async def stop(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Close every stream (the SMs see UNAVAILABLE and reconnect later), then stop."""
        self.stopping = True
        self.nodes.close_all("the CM is stopping")
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._server is not None:
            await self._server.stop(grace_s)
        log.info("smserver.stopped", address=self.address)

    async def __aenter__(self) -> SMServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _expire_loop(self) -> None:
        """Call `expire` when a node's timeout falls due (checked at least every second, as a
        node that goes away moves the next deadline)."""
        while True:
            deadline = self.nodes.next_deadline()
            delay = 1.0 if deadline is None else deadline - self.nodes.clock()
            await asyncio.sleep(min(1.0, max(0.0, delay)))
            self.nodes.expire()
