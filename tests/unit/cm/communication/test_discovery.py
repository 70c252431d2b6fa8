"""Discovery: the answer read as AosCore reads it, kept until its nextRequestDelay or a 401,
and failures told apart (a certificate from the rest)."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest

from aoscore_py.cm.communication.discovery import Discovery, parse_answer, request_body
from aoscore_py.errors import CertificateError, ConfigError, LinkError, certificate_failure
from aoscore_py.iam.identity import Identity, ensure_identity

from ...iam.stubs import DISCOVERY_URL, StubCloud


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def cloud(tmp_path: Path) -> StubCloud:
    return StubCloud(tmp_path / "cloud")


@pytest.fixture
async def identity(cloud: StubCloud, tmp_path: Path) -> Identity:
    return await ensure_identity(
        tmp_path / "data",
        token=cloud.token(),
        discovery_url=DISCOVERY_URL,
        transport=cloud.transport(),
    )


def _discovery(cloud: StubCloud, identity: Identity, clock: Clock) -> Discovery:
    return Discovery(DISCOVERY_URL, identity, clock=clock, transport=cloud.transport())


class TestAnswer:
    def test_keys_are_read_case_insensitively(self) -> None:
        answer = parse_answer(
            {
                "ConnectionInfo": ["wss://a:1", "wss://b:2"],
                "AUTHTOKEN": "t",
                "nextRequestDelay": 1500,
            }
        )
        assert answer.urls == ("wss://a:1", "wss://b:2")
        assert answer.token == "t" and answer.next_request_s == 1.5

    def test_urls_other_than_wss_are_skipped(self) -> None:
        answer = parse_answer(
            {"connectionInfo": ["ws://a", "https://b", "wss://c"], "authToken": "t"}
        )
        assert answer.urls == ("wss://c",)

    def test_null_fields_count_as_missing(self) -> None:
        answer = parse_answer({"connectionInfo": None, "authToken": None, "nextRequestDelay": None})
        assert answer.urls == () and answer.next_request_s > 0

    @pytest.mark.parametrize(
        "body",
        [
            [],
            {"connectionInfo": "wss://a"},
            {"connectionInfo": ["wss://a"], "authToken": 5},
            {"connectionInfo": ["wss://a"]},
            {"connectionInfo": ["wss://a"], "authToken": "t", "nextRequestDelay": -1},
            {"connectionInfo": ["wss://a"], "authToken": "t", "nextRequestDelay": True},
        ],
    )
    def test_a_malformed_answer_is_a_link_error(self, body: Any) -> None:
        with pytest.raises(LinkError):
            parse_answer(body)

    def test_the_request_is_protocol_7_wss(self) -> None:
        assert request_body("u1") == {
            "version": 7,
            "systemId": "u1",
            "supportedProtocols": ["wss"],
        }


class TestTargets:
    async def test_targets_carry_the_token_and_the_units_certificate(
        self, cloud: StubCloud, identity: Identity
    ) -> None:
        discovery = _discovery(cloud, identity, Clock())
        (target,) = await discovery.targets()
        assert target.url == "wss://cloud.test:1"
        assert target.headers == {"Authorization": "Bearer t1"}
        assert isinstance(target.ssl_context, ssl.SSLContext)
        assert cloud.requests[-1] == ("/discovery", request_body(identity.system_id))

    async def test_the_answer_is_kept_until_next_request_delay(
        self, cloud: StubCloud, identity: Identity
    ) -> None:
        clock = Clock()
        discovery = _discovery(cloud, identity, clock)
        await discovery.targets()
        clock.now += 59
        await discovery.targets()
        assert cloud.paths().count("/discovery") == 1
        clock.now += 2
        await discovery.targets()
        assert cloud.paths().count("/discovery") == 2

    async def test_a_401_runs_discovery_again(self, cloud: StubCloud, identity: Identity) -> None:
        tokens = iter(["t1", "t2"])
        cloud.discovery = lambda _b: (
            200,
            {"connectionInfo": ["wss://a:1"], "authToken": next(tokens), "nextRequestDelay": 60000},
        )
        discovery = _discovery(cloud, identity, Clock())
        (first,) = await discovery.targets()
        discovery.unauthorized(first)
        (second,) = await discovery.targets()
        assert second.headers["Authorization"] == "Bearer t2"

    async def test_when_every_url_failed_discovery_runs_again(
        self, cloud: StubCloud, identity: Identity
    ) -> None:
        discovery = _discovery(cloud, identity, Clock())
        await discovery.targets()
        discovery.exhausted()
        await discovery.targets()
        assert cloud.paths().count("/discovery") == 2

    async def test_no_url_now_waits_for_next_request_delay(
        self, cloud: StubCloud, identity: Identity
    ) -> None:
        clock = Clock()
        cloud.discovery = lambda _b: (200, {"connectionInfo": [], "nextRequestDelay": 30000})
        discovery = _discovery(cloud, identity, clock)
        for _ in range(3):
            with pytest.raises(LinkError, match="no wss URL"):
                await discovery.targets()
        assert cloud.paths().count("/discovery") == 1
        clock.now += 31
        with pytest.raises(LinkError):
            await discovery.targets()
        assert cloud.paths().count("/discovery") == 2

    async def test_a_refusal_names_the_status_and_reason(
        self, cloud: StubCloud, identity: Identity
    ) -> None:
        cloud.discovery = lambda _b: (403, {"error": "unit x is not provisioned here"})
        with pytest.raises(LinkError, match="403: unit x is not provisioned here"):
            await _discovery(cloud, identity, Clock()).targets()

    async def test_a_certificate_failure_is_told_apart(self, identity: Identity) -> None:
        def fail(request: httpx.Request) -> httpx.Response:
            try:
                raise ssl.SSLCertVerificationError(1, "certificate verify failed")
            except ssl.SSLError as exc:
                raise httpx.ConnectError(str(exc), request=request) from exc

        discovery = Discovery(DISCOVERY_URL, identity, transport=httpx.MockTransport(fail))
        with pytest.raises(CertificateError) as caught:
            await discovery.targets()
        assert certificate_failure(caught.value)

    async def test_an_unreachable_cloud_is_a_plain_link_error(self, identity: Identity) -> None:
        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused", request=request)

        discovery = Discovery(DISCOVERY_URL, identity, transport=httpx.MockTransport(refuse))
        with pytest.raises(LinkError) as caught:
            await discovery.targets()
        assert not isinstance(caught.value, CertificateError)
        assert not certificate_failure(caught.value)

    def test_discovery_needs_https(self, identity: Identity) -> None:
        with pytest.raises(ConfigError, match="https"):
            Discovery("http://cloud.test/discovery", identity)
