"""Polling, the cloud link's fallback transport over HTTPS, for units whose network lets no
WebSocket through (a proxy that strips the upgrade, a gateway that cuts long-lived connections).

`pollchannel.PollChannel` offers the two operations the link uses on a WebSocket, `send(frame)`
and async iteration over received frames, so `CloudLink._serve` drives it unchanged:

- what the unit sends (outbox frames, its acks and nacks) is POSTed to
  `{base}/units/{systemId}/messages` as a JSON array of frames; the answer, a JSON array of the
  cloud's reply frames (its acks, blobUrls), is received as if it came over the WebSocket;
- every poll interval (jittered +-20 %) `GET {base}/units/{systemId}/desired` with
  `If-None-Match: <etag>`: 200 is a whole desired-status frame and its ETag, 304 nothing new.

Both need the unit's client certificate and the discovery bearer token. An ETag is kept (in
`<data-dir>/poll-etag.json`, durably) only once the unit's ack of that desired status reached
the cloud: a status refused, or whose ack was lost, is fetched again at the next poll, as the
cloud resends one over the WebSocket. After a restart the kept ETag makes the first poll a 304.

This module is the plain part, tested without sockets: the settings, the jittered schedule,
the decision to poll, the ETag bookkeeping and its file. `pollchannel.py` is the httpx adapter.
"""

from __future__ import annotations

import enum
import random
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ...fsutil import atomic_write
from ...logs import get_logger

log = get_logger("communication.poll")

POLL_JITTER = 0.2
"""Each poll interval is drawn within +-20 % of the setting, so a fleet does not poll in step."""


class Transport(enum.StrEnum):
    """How the link reaches the cloud: WebSocket only, polling only, or WebSocket with polling
    after `poll_after_s` without one."""

    WS = "ws"
    POLL = "poll"
    AUTO = "auto"


@dataclass(frozen=True)
class PollSettings:
    """Where and how the link polls.

    Args:
        base_url: the cloud's HTTPS base; the unit's endpoints are under `/units/{systemId}/`.
        etag_path: where the ETag of the last acked desired status is kept.
        transport: `poll` polls only; `auto` polls while no WebSocket has been up for
            `after_s`.
        after_s: seconds without a WebSocket before `auto` polls.
        interval_s: seconds between polls (jittered +-20 %).
    """

    base_url: str
    etag_path: Path
    transport: Transport = Transport.AUTO
    after_s: float = 300.0
    interval_s: float = 60.0


@dataclass(frozen=True)
class PollTarget:
    """The unit's two endpoints, with the bearer header and the mutual-TLS context."""

    messages_url: str
    desired_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    ssl_context: ssl.SSLContext | None = None

    @classmethod
    def of(
        cls,
        base_url: str,
        system_id: str,
        headers: Mapping[str, str],
        context: ssl.SSLContext | None,
    ) -> PollTarget:
        unit = f"{base_url.rstrip('/')}/units/{system_id}"
        return cls(f"{unit}/messages", f"{unit}/desired", dict(headers), context)


def jittered(interval_s: float, rng: random.Random, jitter: float = POLL_JITTER) -> float:
    """`interval_s` moved by up to +-`jitter` of itself: units started together (a power cut
    over a site) spread their polls instead of hitting the cloud at once."""
    return max(0.0, interval_s * (1.0 + rng.uniform(-jitter, jitter)))


def fallback_wait(now: float, ws_seen: float, after_s: float, *, ws_up: bool) -> float | None:
    """Seconds until `auto` should poll: None while the WebSocket is up, else what is left of
    `after_s` since the WebSocket was last up (or the link started), 0 when it is time."""
    if ws_up:
        return None
    return max(0.0, ws_seen + after_s - now)


@dataclass
class PollSchedule:
    """When the next poll is due: a jittered interval after the last poll, or after the last
    desired status that arrived by push (it says the cloud has nothing newer for now)."""

    interval_s: float
    rng: random.Random = field(default_factory=random.Random)
    _due: float | None = None  # None: poll at once

    def due(self) -> float | None:
        """The monotonic time the next poll is due; None: now."""
        return self._due

    def polled(self, now: float) -> None:
        self._due = now + jittered(self.interval_s, self.rng)

    def pushed(self, now: float) -> None:
        """A desired status arrived by push: the poll timer starts again."""
        self.polled(now)


@dataclass
class EtagBook:
    """Which ETag to send, and when one becomes the kept one.

    A 200 offers an ETag under the frame's txn; the unit's ack of that txn, once the cloud has
    it, makes it current (and kept). A nack forgets the offer: the next poll fetches it again.
    """

    current: str | None = None
    _offers: dict[str, str] = field(default_factory=dict)

    def offered(self, txn: str, etag: str) -> None:
        self._offers[txn] = etag

    def answered(self, txn: str, *, acked: bool) -> str | None:
        """The unit's answer to `txn` reached the cloud; the ETag to keep now, if any."""
        etag = self._offers.pop(txn, None)
        if etag is None or not acked:
            return None
        self.current = etag
        return etag


@dataclass(frozen=True)
class EtagFile:
    """The kept ETag, for the desired-status URL it came from (another URL: none kept)."""

    path: Path

    def load(self, url: str) -> str | None:
        try:
            doc = orjson.loads(self.path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            if not isinstance(exc, FileNotFoundError):
                log.warning("poll.etag_unreadable", path=str(self.path), error=str(exc))
            return None
        if not isinstance(doc, dict) or doc.get("url") != url:
            return None
        etag = doc.get("etag")
        return etag if isinstance(etag, str) and etag else None

    def save(self, url: str, etag: str) -> None:
        """Keep `etag` durably (temp, fsync, rename, fsync the folder)."""
        atomic_write(self.path, orjson.dumps({"url": url, "etag": etag}))


def answer_of(frame: bytes | str) -> tuple[str, bool] | None:
    """(txn, acked) when `frame` is the unit's ack or nack of a cloud message, else None."""
    try:
        doc = orjson.loads(frame)
        txn = doc["header"]["txn"]
        kind = doc["data"]["messageType"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(txn, str) or kind not in ("ack", "nack"):
        return None
    return txn, kind == "ack"


def txn_of(frame: bytes) -> str | None:
    try:
        txn = orjson.loads(frame)["header"]["txn"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None
    return txn if isinstance(txn, str) else None
