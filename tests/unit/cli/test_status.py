"""`aoscore status`'s rendering of the API's JSON, plain and rich, and its URL check."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from aoscore_py.admin.client import check_admin_url
from aoscore_py.cli.status import render_rich, summary_lines
from aoscore_py.errors import ConfigError


def body() -> dict[str, Any]:
    instance = {
        "item": "web",
        "subject": "subj1",
        "instance": 0,
        "version": "1.0.0",
        "state": "failed",
        "priority": 10,
        "error": {"aosCode": 1, "exitCode": 1, "message": "exited 1"},
    }
    return {
        "cycle": {
            "phase": "downloading",
            "running": True,
            "failure": None,
            "journal": [{"from": "none", "event": "start", "to": "downloading"}],
        },
        "items": {
            "items": [{"id": "web", "version": "1.0.0", "state": "pending", "error": None}],
            "downloads": [
                {
                    "digest": "sha256:" + "a" * 64,
                    "size": 50 << 20,
                    "present": 25 << 20,
                    "percent": 50.0,
                    "bytesPerSecond": 5 << 20,
                    "etaSeconds": 5.0,
                }
            ],
        },
        "nodes": {
            "nodes": [
                {
                    "id": "node-1",
                    "state": "provisioned",
                    "connected": True,
                    "goneForSeconds": 0,
                    "instances": [instance],
                },
                {
                    "id": "node-2",
                    "state": "error",
                    "connected": False,
                    "goneForSeconds": 75.0,
                    "instances": [],
                },
            ],
            "unplaced": [],
        },
        "link": {
            "health": "degraded",
            "connected": False,
            "publishMode": "buffer-only",
            "outbox": {"depth": 3, "oldestAgeSeconds": 42.5},
        },
    }


def test_plain_lines_name_every_fact() -> None:
    assert summary_lines(body()) == [
        "cycle: downloading (running)",
        "  last move: none -start-> downloading",
        "link: degraded, not connected, publish buffer-only, outbox 3 (oldest 42.5 s)",
        "items: 1",
        "  web 1.0.0 pending",
        "  downloading sha256:aaaaaaaaaaaa 50.0 % of 50.0 MiB at 5.0 MiB/s, 5 s left",
        "nodes: 2",
        "  node-1 provisioned",
        "    web/subj1/0 1.0.0 failed: exited 1",
        "  node-2 error, SM gone 75 s",
    ]


def test_a_failed_cycle_says_why() -> None:
    b = body()
    b["cycle"].update(
        running=False, phase="none", failure="permanent", error="bad digest", failedItems=["web"]
    )
    lines = summary_lines(b)
    assert "  failed (permanent): bad digest" in lines
    assert "  failed items: web" in lines


def test_rich_tables_on_a_terminal() -> None:
    out = io.StringIO()
    render_rich(body(), Console(file=out, force_terminal=True, width=120, color_system=None))
    text = out.getvalue()
    for expected in ("cycle: downloading", "degraded", "web/subj1/0", "exited 1", "50.0", "node-2"):
        assert expected in text


@pytest.mark.parametrize("url", ["http://127.0.0.1:8095", "http://localhost:1/"])
def test_admin_urls(url: str) -> None:
    assert check_admin_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["https://127.0.0.1:1", "unix:/x", "127.0.0.1:80", "http://"])
def test_bad_admin_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="http://HOST:PORT"):
        check_admin_url(url)
