"""When the node's statuses are news: the fingerprint of a report, alerts, the reporter."""

from __future__ import annotations

import pytest

from aoscore_py.sm.reporter import (
    Meta,
    Reporter,
    alert_worthy,
    compose,
    countdown,
    fingerprint,
    steady,
)

from .node_stubs import ACTIVE, CRASH, FAILED, digest, key, status


class TestCompose:
    def test_failures_replace_what_the_manager_says(self) -> None:
        failed = status("a", FAILED, "2.0", "ErrImagePull: gone")
        assert compose([status("b"), status("a")], {key("a"): failed}) == [failed, status("b")]


class TestReporting:
    def test_the_countdown_is_no_news(self) -> None:
        assert steady(f"{CRASH}; next start in 7 s") == CRASH
        assert countdown(f"{CRASH}; next start in 7 s") == 7
        assert countdown(CRASH) is None
        meta = {key("a"): Meta()}
        before = [status("a", FAILED, message=f"{CRASH}; next start in 9 s")]
        after = [status("a", FAILED, message=f"{CRASH}; next start in 8 s")]
        assert fingerprint(before, meta) == fingerprint(after, meta)
        assert fingerprint(before, meta) != fingerprint([status("a", ACTIVE)], meta)

    def test_a_new_manifest_is_news(self) -> None:
        statuses = [status("a")]
        assert fingerprint(statuses, {key("a"): Meta("service", digest("a"))}) != fingerprint(
            statuses, {key("a"): Meta("service", digest("b"))}
        )

    @pytest.mark.parametrize(
        ("before", "now", "worthy"),
        [
            (None, status("a", FAILED, message=CRASH), True),
            (
                status("a", ACTIVE),
                status("a", FAILED, message=f"{CRASH}; next start in 10 s"),
                True,
            ),
            (
                status("a", FAILED, message=f"{CRASH}; next start in 10 s"),
                status("a", FAILED, message=f"{CRASH}; next start in 9 s"),
                False,
            ),
            (  # started again, failed again: a new backoff
                status("a", FAILED, message=f"{CRASH}; next start in 1 s"),
                status("a", FAILED, message=f"{CRASH}; next start in 20 s"),
                True,
            ),
            (  # the countdown appears again after the restart: a new crash
                status("a", FAILED, message=CRASH),
                status("a", FAILED, message=f"{CRASH}; next start in 20 s"),
                True,
            ),
            (
                status("a", FAILED, message=CRASH),
                status("a", FAILED, message=CRASH.replace("crash 1", "crash 2")),
                True,
            ),
            (status("a", FAILED, message=CRASH), status("a", FAILED, "2.0", CRASH), True),
            (None, status("a", FAILED, message="container not found; the SM creates it"), False),
            (None, status("a", FAILED, message="health check failing"), False),
            (None, status("a", ACTIVE), False),
            (None, status("a", FAILED, message="ErrImagePull: blob gone"), True),
            (None, status("a", FAILED, message="StartFailure: no such runtime"), True),
        ],
    )
    def test_alerts(self, before, now, worthy: bool) -> None:
        assert alert_worthy(before, now) is worthy

    def test_the_reporter_remembers_what_was_sent_and_seen(self) -> None:
        reporter, meta = Reporter(), {key("a"): Meta()}
        failing = [status("a", FAILED, message=CRASH)]
        assert reporter.changed(failing, meta)
        reporter.mark_sent(failing, meta)
        assert not reporter.changed(failing, meta)
        assert reporter.alerts(failing) == failing
        assert reporter.alerts(failing) == []
