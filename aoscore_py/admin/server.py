"""The admin API's HTTP adapter (aiohttp): the token check, the route table, the listeners.

It serves `<data-dir>/admin.sock` (0600) and, if asked, one loopback TCP address. A socket that
cannot be made (a file system without socket files) is logged and skipped: the agent's job is
the unit, and the operator still has the logs; a TCP address that cannot be bound fails the
start, as a taken SM port does, since the operator asked for it by name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from ..errors import AosError, ConfigError
from ..logs import get_logger
from .auth import authorized
from .listen import bind_unix_socket
from .routes import ROUTES, Route, Sources, error_response

log = get_logger("admin")

SOURCES: web.AppKey[Sources] = web.AppKey("sources", Sources)
TOKEN: web.AppKey[str] = web.AppKey("token", str)


@web.middleware
async def require_token(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every request, unknown paths included, needs the bearer token: 401 otherwise."""
    if not authorized(request.headers.get("Authorization"), request.app[TOKEN]):
        response = error_response(401, "a bearer token is needed: <data-dir>/admin.token")
        response.headers["WWW-Authenticate"] = 'Bearer realm="aoscore"'
        return response
    return await handler(request)


def _bind(route: Route, sources: Sources) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        return await route.handler(sources, request)

    return handle


def make_app(sources: Sources, token: str) -> web.Application:
    """The aiohttp application: exactly the rows of `ROUTES`, behind the token."""
    app = web.Application(middlewares=[require_token])
    app[SOURCES] = sources
    app[TOKEN] = token
    for route in ROUTES:
        app.router.add_route(route.method, route.path, _bind(route, sources))
    return app


class AdminServer:
    """Serves the admin API until `stop`.

    Args:
        app: the application (`make_app`).
        socket_path: the Unix socket, normally `<data-dir>/admin.sock`.
        listen: a loopback (host, port) to serve too; None: the socket only.
    """

    def __init__(
        self, app: web.Application, socket_path: Path, listen: tuple[str, int] | None = None
    ) -> None:
        self._app = app
        self.socket_path = socket_path
        self._listen = listen
        self._runner: web.AppRunner | None = None
        self._socket_bound = False
        self.port: int | None = None

    async def start(self) -> None:
        """Listen on the socket (and the TCP address).

        Raises:
            AosError: the TCP address cannot be bound (in use, not on this host): exit 1,
                as for a taken SM port.
        """
        runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        try:
            sock = bind_unix_socket(self.socket_path)
        except (OSError, ConfigError) as exc:
            error = exc.message if isinstance(exc, AosError) else f"{exc.strerror or exc}"
            log.warning(
                "admin.socket_failed",
                path=str(self.socket_path),
                error=error,
                next="no admin API on the socket" + (" (TCP only)" if self._listen else ""),
            )
        else:
            self._socket_bound = True
            await web.SockSite(runner, sock).start()
        if self._listen is not None:
            host, port = self._listen
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                await self.stop()
                raise AosError(
                    f"admin API: cannot listen on {host}:{port}: {exc.strerror or exc}"
                ) from None
            ports = [a[1] for a in runner.addresses if isinstance(a, tuple)]
            self.port = ports[0] if ports else port
        log.info(
            "admin.started",
            socket=str(self.socket_path) if self._socket_bound else None,
            listen=f"{self._listen[0]}:{self.port}" if self._listen else None,
        )

    async def stop(self) -> None:
        """Stop serving and remove the socket file (a later start makes it again)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._socket_bound:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self._socket_bound = False
            log.info("admin.stopped", socket=str(self.socket_path))
