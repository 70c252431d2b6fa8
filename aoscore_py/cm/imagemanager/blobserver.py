"""The CM's blob server: the verified store, over HTTPS, for the unit's service managers.

An SM never asks the cloud or a registry for a blob: it asks its CM (`GetBlobsInfos`), which
answers URLs made by `url_for`, and fetches them here. Only committed blobs are served
(`blobs/sha256/<hex>` of the store, which holds nothing unverified); partial files never are.
`web.FileResponse` answers `Range` (206 with `Content-Range`), `If-Range` and `HEAD`, so an SM's
interrupted transfer resumes where it stopped, as the shared downloader expects.

The path names a digest, checked with the store's own rule (`sha256:` and 64 lowercase hex
characters) before any file is touched: a malformed one is 400, one not stored is 404, and no
request can name a file outside `blobs/sha256`.

Transport: HTTPS with the unit's certificates, mutual TLS by default (only the unit's nodes get
blobs); plain HTTP only when `insecure` and bound to a loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from ...blobs.store import BlobStore, digest_hex
from ...errors import BlobError, ConfigError, LocalError
from ...iam.tls import TlsFiles, check_insecure_host, mutual_server_context, server_context
from ...logs import get_logger

log = get_logger("imagemanager.blobserver")

# How long `stop` lets a transfer in flight finish before the connection is closed.
SHUTDOWN_GRACE_S = 2.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _url_host(host: str) -> str:
    """`host` as a URL's authority spells it (an IPv6 address in brackets)."""
    try:
        if ipaddress.ip_address(host.strip("[]")).version == 6:
            return f"[{host.strip('[]')}]"
    except ValueError:
        pass
    return host


def _peer(request: web.Request) -> str:
    """Who asked: the client certificate's common name, else the address."""
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return request.remote or "?"


class BlobServer:
    """Serves a `BlobStore`'s verified blobs at `/blobs/<digest>`.

    Args:
        store: the CM's store; only its committed blobs are served.
        host: the address to listen on.
        port: the port; 0 picks a free one (read `.port` after `start`).
        tls: the CM's certificate, key and the unit's CA; None only with `insecure`.
        client_auth: require a client certificate from the unit's CA (mutual TLS). Off, any
            client that trusts the CA may fetch.
        insecure: serve plain HTTP; allowed on a loopback `host` only.
        public_host: the host name put in URLs, which SMs dial and which must match a SAN of
            the certificate; defaults to `host` (required when `host` is 0.0.0.0 or ::).
        public_port: the port put in URLs (a proxy or NAT in front); defaults to the one it
            listens on.
        known: when given, a stored blob for which it returns False is answered 404 (the image
            manager's records decide what it vouches for).

    Raises:
        ConfigError: plaintext on a non-loopback address (naming it), no TLS files without
            `insecure`, both, no URL host for an unspecified address, or a TLS file missing
            or not PEM (naming it).
    """

    def __init__(
        self,
        store: BlobStore,
        host: str,
        port: int = 0,
        *,
        tls: TlsFiles | None = None,
        client_auth: bool = True,
        insecure: bool = False,
        public_host: str | None = None,
        public_port: int | None = None,
        known: Callable[[str], bool] | None = None,
    ) -> None:
        if insecure:
            if tls is not None:
                raise ConfigError("blob server: give TLS files or insecure, not both")
            check_insecure_host(host, "blob server")
            self._ssl: ssl.SSLContext | None = None
        elif tls is None:
            raise ConfigError(
                "blob server: TLS files (the unit's CA, the CM's certificate and key) are "
                "needed; plaintext only with insecure on a loopback address"
            )
        elif client_auth:
            self._ssl = mutual_server_context(tls)
        else:
            self._ssl = server_context(tls.cert, tls.key)
        url_host = public_host or host
        if _is_unspecified(url_host):
            raise ConfigError(
                f"blob server on {host}: give the host name SMs dial (public_host), "
                "an unspecified address cannot be put in a URL"
            )
        self._store = store
        self._known = known
        self.host = host
        self.port = port
        self._public_port = public_port
        self.scheme = "http" if self._ssl is None else "https"
        self._url_host = _url_host(url_host)
        self._runner: web.AppRunner | None = None

    # -- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on HOST:PORT; `.port` is the port bound (when 0 was asked).

        Raises:
            LocalError: already started.
            OSError: the address cannot be bound (in use, not ours).
        """
        if self._runner is not None:
            raise LocalError("blob server already started")
        app = web.Application(middlewares=[self._catch])
        app.router.add_get("/blobs/{digest}", self._blob)  # HEAD too
        app.on_response_prepare.append(self._log_response)
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE_S
        )
        await runner.setup()
        try:
            site = web.SockSite(
                runner,
                await self._bind(),
                ssl_context=self._ssl,
            )
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info("blobserver.started", url=self.base_url, mutual_tls=self._mutual)

    async def _bind(self) -> socket.socket:
        """One listening socket on the first address `host` names (IPv4 first).

        aiohttp's TCPSite binds every address a name resolves to, and with port 0 each gets
        its own port: `localhost` would then listen on two ports, and `.port` name only one.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host.strip("[]"), self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        if not infos:
            raise OSError(f"blob server: {self.host} names no address")
        family, kind, proto, _name, address = min(infos, key=lambda i: i[0] != socket.AF_INET)
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        """Stop listening and close every connection (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            log.info("blobserver.stopped", url=self.base_url)

    async def __aenter__(self) -> BlobServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    @property
    def _mutual(self) -> bool:
        return self._ssl is not None and self._ssl.verify_mode == ssl.CERT_REQUIRED

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self._url_host}:{self._public_port or self.port}"

    def url_for(self, digest: str) -> str:
        """The URL an SM fetches `digest` from (whether it is stored or not).

        Raises:
            BlobError: not a sha256 digest (invalidArgument, or notSupported for sha384/512).
            LocalError: the server is not started and was asked for port 0.
        """
        digest_hex(digest)
        if not self.port:
            raise LocalError("blob server: no port yet (start it first)")
        return f"{self.base_url}/blobs/{digest}"

    # -- requests -----------------------------------------------------------------------------

    def _servable(self, digest: str) -> bool:
        if self._known is not None and not self._known(digest):
            return False
        return self._store.path(digest).is_file()

    async def _blob(self, request: web.Request) -> web.StreamResponse:
        digest = request.match_info["digest"]
        try:
            path = self._store.path(digest)
        except BlobError as exc:
            raise web.HTTPBadRequest(text=exc.message) from None
        if not self._servable(digest):
            raise web.HTTPNotFound(text=f"blob {digest} is not stored")
        return web.FileResponse(
            path,
            headers={
                "Content-Type": "application/octet-stream",
                "Docker-Content-Digest": digest,
                # A digest's bytes never change: any cache may keep them for good.
                "Cache-Control": "public, max-age=31536000, immutable",
            },
        )

    @web.middleware
    async def _catch(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """An unexpected failure (an unreadable store) is a 500 and a warning, not a trace."""
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            log.warning(
                "blobserver.failed",
                method=request.method,
                path=request.path,
                peer=_peer(request),
                error=f"{type(exc).__name__}: {exc}",
            )
            raise web.HTTPInternalServerError(text="the blob cannot be read") from None

    async def _log_response(self, request: web.Request, response: web.StreamResponse) -> None:
        """One line per answer, when its status is final (FileResponse picks 200, 206, 304 or
        416 only as it sends the headers): refusals at warning, the rest at debug."""
        fields = {
            "method": request.method,
            "path": request.path,
            "status": response.status,
            "range": request.headers.get("Range"),
            "peer": _peer(request),
        }
        if response.status >= 400:
            reason = response.text if isinstance(response, web.Response) else None
            log.warning("blobserver.refused", reason=reason, **fields)
        else:
            log.debug("blobserver.request", **fields)
