"""Where the cloud link dials: the seam between the link and discovery.

The link asks its `TargetSource` for the URLs to try, in order, each with the headers and TLS
settings to use. A fixed `--cloud URL` is a `StaticTargets`; discovery (HTTPS, PROTOCOL.md,
"Connection") is another source. The link tells the source when the cloud answered 401, so the
next `targets()` runs discovery again instead of reusing a refused token.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Target:
    """One WebSocket URL to dial, with its request headers and TLS settings (None: plain ws)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None


class TargetSource(Protocol):
    """Gives the link the URLs to try."""

    async def targets(self) -> list[Target]:
        """The URLs to try now, best first.

        Raises:
            LinkError: no URL can be had now (discovery failed); the link backs off and asks
                again.
        """
        ...

    def unauthorized(self, target: Target) -> None:
        """The cloud refused `target`'s credentials (HTTP 401): get new ones next time."""
        ...

    def exhausted(self) -> None:
        """Every URL failed: discover again next time (after the link's backoff)."""
        ...


@dataclass(frozen=True)
class StaticTargets:
    """A single fixed URL (`--cloud`), as before discovery existed."""

    url: str
    ssl_context: ssl.SSLContext | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    async def targets(self) -> list[Target]:
        return [Target(self.url, self.headers, self.ssl_context)]

    def unauthorized(self, target: Target) -> None:
        """A fixed URL has nothing to refresh: the link keeps backing off."""

    def exhausted(self) -> None:
        """A fixed URL has nothing to discover."""
