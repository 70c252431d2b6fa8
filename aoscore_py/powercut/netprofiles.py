"""Impaired networks as plain data, and the schedule a proxy follows to impose one.

A profile names what a unit's network does to its traffic; `LinkSchedule` turns it into
decisions a byte-stream proxy can carry out (linkproxy.py applies them): when each piece of a
connection's stream may leave, and when every connection is reset. Everything here is pure:
time comes in as a number, randomness from a seed, so a run can be replayed and each rule has
a millisecond test.

The profiles (`PROFILES`, full size; `profile(name, scale)` compresses one):

- `clean`: nothing happens; the proxies only move bytes.
- `cellular`: 256 kbit/s each way (a token bucket per direction, 16 KiB deep), 60 ms one-way
  latency with up to 40 ms jitter per segment, 2 % of segments lost, and every 200 s a 30 s
  spike during which the link delivers nothing.
- `flaky`: a fast link that resets every connection once a minute, and refuses new ones for
  the 3 s a modem takes to attach again.

What a byte-stream proxy can model, and what it cannot. It terminates TCP on both sides, so it
never sees a packet: each side's kernel acknowledges at once, retransmits nothing and keeps its
congestion window. So:

- Loss shows as what an application sees of it: the stream stops while the lost segment is
  sent again. A lost segment (`loss` of `segment_bytes` pieces) and everything behind it waits
  `rto_s`, a retransmission timeout; there is no retransmitted traffic on the wire and no
  shrinking of the sender's window, so loss costs time, never bandwidth.
- Reordering cannot happen inside one stream: TCP hands bytes over in order, and a proxy that
  swapped them would corrupt the stream, not reorder it. A segment overtaken on the wire shows
  as a stall of the segments behind it until it arrives (head-of-line blocking): that is
  `jitter_s`, a random extra delay per segment that later segments never overtake. What can
  arrive out of order is traffic on different connections (each has its own draws): a status
  sent again on a new connection may land before one still held on the old.
- A spike holds every byte, connection set-up aside (the proxy accepts and dials at once; the
  handshakes' bytes are held like any other).
- A disconnect is a reset of both sides (the peer sees ECONNRESET); a link that goes silent
  without one is a spike long enough to outlast the keepalive.
- The bandwidth cap is per proxy: connections through one proxy share it, connections through
  two proxies (the cloud link and the blob downloads) get a cap each.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

from ..errors import LocalError

DIRECTIONS = ("up", "down")
MSS = 1448  # a TCP segment's payload on a 1500-byte path with timestamps


@dataclass(frozen=True)
class Profile:
    """What a network does to a unit's traffic; times in seconds, sizes in bytes.

    `time_scale` says how compressed the profile is: `scaled(0.1)` makes every duration ten
    times shorter and the bandwidth ten times higher, so a run sees the same number of spikes,
    stalls and disconnects per byte moved in a tenth of the time. Probabilities and sizes do
    not change.
    """

    name: str
    rate_bps: float | None = None  # bits per second, each direction; None: as fast as loopback
    burst_bytes: int = 16 * 1024  # the bucket's depth: what leaves at once after a pause
    latency_s: float = 0.0  # one way, added to every segment
    jitter_s: float = 0.0  # at most this much more per segment, never overtaking
    loss: float = 0.0  # the share of segments lost once
    rto_s: float = 0.0  # how long a lost segment holds the stream
    spike_every_s: float | None = None  # a latency spike this often
    spike_s: float = 0.0  # for this long the link delivers nothing
    disconnect_every_s: float | None = None  # every connection reset this often
    outage_s: float = 0.0  # new connections refused this long after each reset
    segment_bytes: int = MSS  # the unit that loss and jitter apply to
    time_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise LocalError(f"profile {self.name}: loss must be in [0, 1), not {self.loss}")
        if self.rate_bps is not None and self.rate_bps <= 0:
            raise LocalError(f"profile {self.name}: rate must be > 0, not {self.rate_bps}")
        if self.time_scale <= 0 or self.segment_bytes < 1 or self.burst_bytes < 1:
            raise LocalError(f"profile {self.name}: time_scale, segment and burst must be > 0")
        for every, length in (
            (self.spike_every_s, self.spike_s),
            (self.disconnect_every_s, self.outage_s),
        ):
            if every is not None and not 0 <= length < every:
                raise LocalError(f"profile {self.name}: a window of {length} s every {every} s")

    def scaled(self, time_scale: float) -> Profile:
        """This profile with every duration times `time_scale` and the rate divided by it.

        Raises:
            LocalError: a scale that is not positive.
        """
        if time_scale <= 0:
            raise LocalError(f"time_scale must be > 0, not {time_scale}")
        s = time_scale

        def every(value: float | None) -> float | None:
            return None if value is None else value * s

        return replace(
            self,
            rate_bps=None if self.rate_bps is None else self.rate_bps / s,
            latency_s=self.latency_s * s,
            jitter_s=self.jitter_s * s,
            rto_s=self.rto_s * s,
            spike_every_s=every(self.spike_every_s),
            spike_s=self.spike_s * s,
            disconnect_every_s=every(self.disconnect_every_s),
            outage_s=self.outage_s * s,
            time_scale=self.time_scale * s,
        )

    @property
    def shapes(self) -> bool:
        """Whether each chunk of a stream needs a departure time (else bytes pass at once)."""
        return bool(
            self.rate_bps or self.latency_s or self.jitter_s or self.loss or self.spike_every_s
        )

    @property
    def keepalive_s(self) -> float:
        """A keepalive the link's round trip never outlasts: 20 s (the default), or above a
        spike held each way with room for the close handshake (docs/cloud-link.md: 70 s on a
        gateway adding 30 s each way)."""
        return max(20.0, math.ceil(2 * self.spike_s + 10 * self.time_scale))

    def describe(self) -> str:
        """One line for logs and reports."""
        parts = []
        if self.rate_bps:
            parts.append(f"{self.rate_bps / 1000:g} kbit/s")
        if self.latency_s or self.jitter_s:
            parts.append(f"latency {self.latency_s:g}+{self.jitter_s:g} s")
        if self.loss:
            parts.append(f"{self.loss:.0%} loss ({self.rto_s:g} s stall)")
        if self.spike_every_s:
            parts.append(f"{self.spike_s:g} s spike every {self.spike_every_s:g} s")
        if self.disconnect_every_s:
            parts.append(f"reset every {self.disconnect_every_s:g} s, {self.outage_s:g} s refused")
        scale = "" if self.time_scale == 1.0 else f" at scale {self.time_scale:g}"
        return f"{self.name}{scale}: " + (", ".join(parts) or "no impairment")


CLEAN = Profile("clean")
CELLULAR = Profile(
    "cellular",
    rate_bps=256_000,
    latency_s=0.06,
    jitter_s=0.04,
    loss=0.02,
    # Linux's RTO is srtt + 4 rttvar, at least 200 ms; on a 120 ms round trip with cellular
    # jitter that is about half a second.
    rto_s=0.5,
    spike_every_s=200.0,
    spike_s=30.0,
)
FLAKY = Profile("flaky", disconnect_every_s=60.0, outage_s=3.0)

PROFILES: dict[str, Profile] = {p.name: p for p in (CLEAN, CELLULAR, FLAKY)}
"""Every profile at full size: what `--network NAME` means."""


def profile(name: str, scale: float = 1.0) -> Profile:
    """The profile called `name`, compressed by `scale` (1.0: full size).

    Raises:
        LocalError: no profile has that name, or the scale is not positive.
    """
    try:
        full = PROFILES[name]
    except KeyError:
        raise LocalError(f"no network profile {name!r} (one of {', '.join(PROFILES)})") from None
    return full if scale == 1.0 else full.scaled(scale)


@dataclass(frozen=True)
class Periodic:
    """Windows of `length_s` every `every_s`, the first opening `phase_s` after `origin`."""

    every_s: float
    length_s: float
    phase_s: float
    origin: float = 0.0

    def start(self, k: int) -> float:
        """When window `k` (0, 1, ...) opens."""
        return self.origin + self.phase_s + k * self.every_s

    def window(self, t: float) -> tuple[float, float] | None:
        """The window holding `t` (start included, end not), or None."""
        k = math.floor((t - self.start(0)) / self.every_s)
        if k < 0:
            return None
        start = self.start(k)
        return (start, start + self.length_s) if t < start + self.length_s else None

    def next_start(self, t: float) -> float:
        """The first window opening after `t` (strictly)."""
        return self.start(max(0, math.floor((t - self.start(0)) / self.every_s) + 1))


def periodic(
    every_s: float, length_s: float, seed: int | str, what: str, origin: float
) -> Periodic:
    """Windows with a phase drawn from the seed: runs with one seed meet the same moments, and
    the first window comes anywhere in the first period, not always at the start."""
    phase = random.Random(f"{seed}/{what}").uniform(0.0, every_s)
    return Periodic(every_s, length_s, phase, origin)


class TokenBucket:
    """A link of `rate_Bps` bytes per second that lets `burst_bytes` through at once after a
    pause (the generic cell rate algorithm: one number, the theoretical arrival time)."""

    def __init__(self, rate_Bps: float, burst_bytes: int) -> None:
        self.rate_Bps = rate_Bps
        self._tau = burst_bytes / rate_Bps
        self._tat = -math.inf

    def reserve(self, now: float, nbytes: int) -> float:
        """Book `nbytes` offered at `now`; when they have left (never before `now`)."""
        self._tat = max(self._tat, now) + nbytes / self.rate_Bps
        return max(now, self._tat - self._tau)


@dataclass(frozen=True)
class Departure:
    """When one segment of a stream may leave, and what held it."""

    due: float
    spike_s: float = 0.0  # held by a spike
    queue_s: float = 0.0  # waited for the bandwidth
    lost: bool = False  # held a retransmission timeout


class StreamSchedule:
    """The departures of one direction of one connection: its own random draws, the link's
    spikes and bucket. Departures never go backwards: a stream is never reordered."""

    def __init__(self, link: LinkSchedule, key: str) -> None:
        self._link = link
        self._rng = random.Random(f"{link.seed}/{link.salt}/{key}")
        self._last = -math.inf

    def departure(self, now: float, nbytes: int, direction: str) -> Departure:
        """When `nbytes` read at `now`, travelling `direction`, may be handed on."""
        p = self._link.profile
        t = self._link.held_until(now)
        spike = t - now
        bucket = self._link.buckets.get(direction)
        sent = bucket.reserve(t, nbytes) if bucket is not None else t
        due = sent + p.latency_s
        if p.jitter_s:
            due += self._rng.uniform(0.0, p.jitter_s)
        lost = bool(p.loss) and self._rng.random() < p.loss
        if lost:
            due += p.rto_s
        due = max(due, self._last)
        self._last = due
        return Departure(due, spike, sent - t, lost)


class LinkSchedule:
    """A profile applied from `origin` on: the link's spikes and disconnects, a token bucket
    per direction shared by its connections, and a `StreamSchedule` per connection direction.

    Args:
        profile: what to impose.
        seed: the randomness; the same seed gives the same spikes, disconnects and draws.
        origin: the time the schedule starts (the proxy's clock).
        salt: tells apart the streams of proxies sharing a seed (their spikes and disconnects
            stay at the same moments, as on one link; their draws differ).
    """

    def __init__(
        self, profile: Profile, seed: int | str = 0, origin: float = 0.0, salt: str = ""
    ) -> None:
        self.profile = profile
        self.seed = seed
        self.salt = salt
        self.origin = origin
        rate = profile.rate_bps
        self.buckets = (
            {d: TokenBucket(rate / 8, profile.burst_bytes) for d in DIRECTIONS} if rate else {}
        )
        self.spikes = (
            periodic(profile.spike_every_s, profile.spike_s, seed, "spike", origin)
            if profile.spike_every_s
            else None
        )
        self.disconnects = (
            periodic(profile.disconnect_every_s, profile.outage_s, seed, "disconnect", origin)
            if profile.disconnect_every_s
            else None
        )

    def held_until(self, t: float) -> float:
        """The end of the spike holding `t`, or `t`."""
        window = self.spikes.window(t) if self.spikes else None
        return window[1] if window else t

    def next_disconnect(self, t: float) -> float | None:
        """When every connection is next reset after `t` (None: never)."""
        return self.disconnects.next_start(t) if self.disconnects else None

    def next_event_end(self, t: float) -> float | None:
        """When the spike or disconnect under way at `t`, or else the next one, is over (its
        outage included); None when the profile has neither. A run waits for it to see its
        unit go through one."""
        ends = []
        for windows in (self.spikes, self.disconnects):
            if windows is not None:
                current = windows.window(t)
                ends.append(current[1] if current else windows.next_start(t) + windows.length_s)
        return min(ends, default=None)

    def meet_next_event(self, t: float, lead_s: float = 0.5) -> float | None:
        """When, after `t`, to start something so that its traffic meets the link's next event:
        a little into the next spike (`lead_s`, at most a quarter of it), or `lead_s` before
        the next disconnect, so the reset finds it under way. None when the profile has
        neither."""
        times = []
        if self.spikes is not None:
            times.append(self.spikes.next_start(t) + min(lead_s, self.spikes.length_s / 4))
        if self.disconnects is not None:
            at = self.disconnects.next_start(t) - lead_s
            times.append(at if at > t else self.disconnects.next_start(at + lead_s) - lead_s)
        return min(times, default=None)

    def stream(self, conn_id: int, direction: str) -> StreamSchedule:
        """The schedule of connection `conn_id` in `direction`."""
        return StreamSchedule(self, f"{conn_id}/{direction}")


def segments(data: bytes, size: int) -> list[bytes]:
    """`data` cut into pieces of at most `size` bytes, in order (b"" stays one piece: the
    EOF)."""
    if not data:
        return [data]
    return [data[i : i + size] for i in range(0, len(data), size)]
