"""The network profiles' schedules, without a socket: what each profile says, how scaling
compresses it, and that each rule (bucket, spike, loss, jitter, disconnect) decides the same
way for the same seed."""

from __future__ import annotations

from itertools import pairwise

import pytest

from aoscore_py.errors import LocalError
from aoscore_py.powercut.netprofiles import (
    CELLULAR,
    FLAKY,
    PROFILES,
    LinkSchedule,
    Periodic,
    Profile,
    TokenBucket,
    periodic,
    profile,
    segments,
)


def departures(link: LinkSchedule, times: list[float], nbytes: int = 1000) -> list[float]:
    stream = link.stream(1, "down")
    return [stream.departure(t, nbytes, "down").due for t in times]


class TestProfiles:
    def test_full_size_profiles_are_what_the_flag_means(self) -> None:
        assert set(PROFILES) == {"clean", "cellular", "flaky"}
        assert profile("cellular") is CELLULAR
        assert CELLULAR.rate_bps == 256_000
        assert (CELLULAR.spike_s, CELLULAR.loss) == (30.0, 0.02)
        assert FLAKY.disconnect_every_s == 60.0
        assert not PROFILES["clean"].shapes and not FLAKY.shapes and CELLULAR.shapes

    def test_scaling_compresses_time_and_raises_the_rate(self) -> None:
        small = profile("cellular", 0.1)
        assert small.spike_s == pytest.approx(3.0)
        assert small.spike_every_s == pytest.approx(20.0)
        assert small.rate_bps == pytest.approx(2_560_000)
        assert small.rto_s == pytest.approx(0.05)
        assert (small.loss, small.segment_bytes, small.time_scale) == (
            0.02,
            CELLULAR.segment_bytes,
            0.1,
        )
        assert profile("flaky", 0.25).disconnect_every_s == pytest.approx(15.0)

    def test_scaling_twice_compounds(self) -> None:
        assert CELLULAR.scaled(0.5).scaled(0.2).spike_s == pytest.approx(3.0)
        assert CELLULAR.scaled(0.5).scaled(0.2).time_scale == pytest.approx(0.1)

    def test_keepalive_outlasts_a_spike_each_way(self) -> None:
        assert CELLULAR.keepalive_s == 70.0  # docs/cloud-link.md's advice
        assert profile("cellular", 0.1).keepalive_s == 20.0
        assert FLAKY.keepalive_s == 20.0

    @pytest.mark.parametrize(
        "bad",
        [
            {"loss": 1.0},
            {"rate_bps": 0},
            {"spike_every_s": 10.0, "spike_s": 10.0},
            {"disconnect_every_s": 5.0, "outage_s": -1.0},
        ],
    )
    def test_an_impossible_profile_is_refused(self, bad: dict[str, float]) -> None:
        with pytest.raises(LocalError):
            Profile("bad", **bad)  # type: ignore[arg-type]

    def test_unknown_name_and_bad_scale_are_refused(self) -> None:
        with pytest.raises(LocalError, match="one of clean, cellular, flaky"):
            profile("dialup")
        with pytest.raises(LocalError):
            profile("cellular", 0.0)

    def test_describe_names_each_impairment(self) -> None:
        text = profile("cellular", 0.1).describe()
        assert text.startswith("cellular at scale 0.1: 2560 kbit/s")
        assert "2% loss" in text and "3 s spike every 20 s" in text
        assert PROFILES["clean"].describe() == "clean: no impairment"


class TestTokenBucket:
    def test_a_burst_passes_at_once_then_the_rate_holds(self) -> None:
        bucket = TokenBucket(1000.0, 500)
        assert bucket.reserve(0.0, 500) == 0.0
        assert bucket.reserve(0.0, 1000) == pytest.approx(1.0)
        assert bucket.reserve(0.0, 1000) == pytest.approx(2.0)

    def test_a_pause_refills_the_burst_but_no_more(self) -> None:
        bucket = TokenBucket(1000.0, 500)
        bucket.reserve(0.0, 2000)  # busy until 1.5 (the first 500 went at once)
        assert bucket.reserve(10.0, 500) == 10.0
        assert bucket.reserve(10.0, 500) == pytest.approx(10.5)

    def test_long_run_rate_is_the_cap(self) -> None:
        bucket = TokenBucket(32_000.0, 16 * 1024)
        last = 0.0
        for _ in range(1000):
            last = bucket.reserve(0.0, 1448)
        assert 1448_000 / last == pytest.approx(32_000, rel=0.02)


class TestPeriodic:
    def test_windows_and_next_starts(self) -> None:
        p = Periodic(every_s=10.0, length_s=3.0, phase_s=4.0, origin=100.0)
        assert p.window(103.9) is None
        assert p.window(104.0) == (104.0, 107.0)
        assert p.window(106.99) == (104.0, 107.0)
        assert p.window(107.0) is None
        assert p.window(115.5) == (114.0, 117.0)
        assert p.next_start(0.0) == 104.0
        assert p.next_start(104.0) == 114.0
        assert p.next_start(113.0) == 114.0

    def test_phase_comes_from_the_seed(self) -> None:
        a = periodic(60.0, 3.0, 7, "disconnect", 0.0)
        assert a == periodic(60.0, 3.0, 7, "disconnect", 0.0)
        assert 0.0 <= a.phase_s < 60.0
        phases = {periodic(60.0, 3.0, seed, "disconnect", 0.0).phase_s for seed in range(20)}
        assert len(phases) == 20


class TestStreamSchedule:
    def test_clean_profile_delays_nothing(self) -> None:
        link = LinkSchedule(PROFILES["clean"])
        assert departures(link, [0.0, 1.0, 2.5]) == [0.0, 1.0, 2.5]

    def test_a_spike_holds_everything_until_its_end(self) -> None:
        p = Profile("spiky", spike_every_s=100.0, spike_s=30.0)
        link = LinkSchedule(p, seed=1, origin=0.0)
        assert link.spikes is not None
        start = link.spikes.start(0)
        d = link.stream(1, "up").departure(start + 5.0, 100, "up")
        assert d.due == pytest.approx(start + 30.0) and d.spike_s == pytest.approx(25.0)
        after = link.stream(2, "up").departure(start + 31.0, 100, "up")
        assert after.due == pytest.approx(start + 31.0) and after.spike_s == 0.0

    def test_spikes_come_at_the_period(self) -> None:
        link = LinkSchedule(CELLULAR.scaled(0.1), seed=3, origin=50.0)
        assert link.spikes is not None
        starts = [link.spikes.start(k) for k in range(4)]
        assert [b - a for a, b in pairwise(starts)] == pytest.approx([20.0] * 3)
        assert all(link.held_until(s + 1.0) == pytest.approx(s + 3.0) for s in starts)

    def test_two_percent_of_segments_stall_one_rto(self) -> None:
        p = Profile("lossy", loss=0.02, rto_s=0.5)
        stream = LinkSchedule(p, seed=11).stream(1, "down")
        results = [stream.departure(float(i), 1448, "down") for i in range(20_000)]
        lost = [r for r in results if r.lost]
        assert len(lost) / len(results) == pytest.approx(0.02, abs=0.004)
        assert all(r.due == pytest.approx(i + 0.5) for i, r in enumerate(results) if r.lost)

    def test_a_stall_holds_the_segments_behind_it(self) -> None:
        p = Profile("lossy", loss=0.5, rto_s=1.0)
        stream = LinkSchedule(p, seed=2).stream(1, "down")
        dues = [stream.departure(i * 0.01, 100, "down").due for i in range(200)]
        assert dues == sorted(dues), "a stream is never reordered"
        assert any(b == a for a, b in pairwise(dues)), "head-of-line wait"

    def test_jitter_stays_within_its_bound_and_in_order(self) -> None:
        p = Profile("jittery", latency_s=0.06, jitter_s=0.04)
        dues = departures(LinkSchedule(p, seed=5), [i * 1.0 for i in range(500)])
        extra = [d - i for i, d in enumerate(dues)]
        assert all(0.06 <= e <= 0.1 + 1e-9 for e in extra)
        assert max(extra) - min(extra) > 0.03, "the draws vary"
        assert dues == sorted(dues)

    def test_bandwidth_is_shared_by_the_connections_of_a_link(self) -> None:
        p = Profile("slow", rate_bps=8000, burst_bytes=1)  # 1000 bytes/s
        link = LinkSchedule(p)
        a = link.stream(1, "down").departure(0.0, 1000, "down")
        b = link.stream(2, "down").departure(0.0, 1000, "down")
        up = link.stream(2, "up").departure(0.0, 1000, "up")
        assert (a.due, b.due, up.due) == pytest.approx((1.0, 2.0, 1.0), abs=0.002)
        assert b.queue_s == pytest.approx(2.0, abs=0.002)

    def test_same_seed_same_decisions_other_seed_other(self) -> None:
        small = CELLULAR.scaled(0.1)
        times = [i * 0.004 for i in range(3000)]
        first = departures(LinkSchedule(small, seed=9, origin=0.0), times, 1448)
        again = departures(LinkSchedule(small, seed=9, origin=0.0), times, 1448)
        other = departures(LinkSchedule(small, seed=10, origin=0.0), times, 1448)
        assert first == again
        assert first != other

    def test_proxies_sharing_a_seed_share_spikes_not_draws(self) -> None:
        small = CELLULAR.scaled(0.1)
        cloud = LinkSchedule(small, seed=4, salt="cloud")
        blobs = LinkSchedule(small, seed=4, salt="registry")
        assert cloud.spikes == blobs.spikes
        times = [i * 0.01 for i in range(500)]
        assert departures(cloud, times) != departures(blobs, times)


class TestDisconnects:
    def test_flaky_resets_once_a_period_from_a_seeded_phase(self) -> None:
        link = LinkSchedule(FLAKY, seed=0, origin=1000.0)
        first = link.next_disconnect(1000.0)
        assert first is not None and 1000.0 <= first < 1060.0
        second = link.next_disconnect(first)
        assert second == pytest.approx(first + 60.0)
        assert link.disconnects is not None
        assert link.disconnects.window(first + 1.0) == (first, first + 3.0)

    def test_next_event_end_is_the_window_under_way_or_the_next(self) -> None:
        link = LinkSchedule(FLAKY, seed=0, origin=0.0)
        assert link.disconnects is not None
        first = link.disconnects.start(0)
        assert link.next_event_end(first - 1.0) == pytest.approx(first + 3.0)
        assert link.next_event_end(first + 1.0) == pytest.approx(first + 3.0)
        assert link.next_event_end(first + 3.0) == pytest.approx(first + 63.0)
        spiky = LinkSchedule(CELLULAR, seed=0, origin=0.0)
        assert spiky.spikes is not None
        assert spiky.next_event_end(0.0) == pytest.approx(spiky.spikes.start(0) + 30.0)
        assert LinkSchedule(PROFILES["clean"]).next_event_end(5.0) is None

    def test_meet_next_event_lands_inside_a_spike_or_just_before_a_reset(self) -> None:
        spiky = LinkSchedule(CELLULAR.scaled(0.1), seed=2, origin=0.0)
        assert spiky.spikes is not None
        start = spiky.spikes.start(1)
        at = spiky.meet_next_event(start - 5.0)
        assert at == pytest.approx(start + 0.5) and spiky.held_until(at) == pytest.approx(start + 3)
        flaky = LinkSchedule(FLAKY, seed=2, origin=0.0)
        assert flaky.disconnects is not None
        reset = flaky.disconnects.start(1)
        assert flaky.meet_next_event(reset - 10.0) == pytest.approx(reset - 0.5)
        # too late for this one: the next
        assert flaky.meet_next_event(reset - 0.2) == pytest.approx(reset + 60.0 - 0.5)
        assert LinkSchedule(PROFILES["clean"]).meet_next_event(1.0) is None

    def test_no_disconnects_without_a_period(self) -> None:
        assert LinkSchedule(CELLULAR).next_disconnect(0.0) is None
        assert LinkSchedule(CELLULAR).disconnects is None


def test_segments_cut_in_order_and_keep_the_eof() -> None:
    assert segments(b"", 4) == [b""]
    assert segments(b"abcdefghij", 4) == [b"abcd", b"efgh", b"ij"]
    assert b"".join(segments(bytes(range(256)) * 40, 1448)) == bytes(range(256)) * 40
