"""Discovery (PROTOCOL.md, "Connection"): where the unit dials, and with which token.

An HTTPS POST over mutual TLS (the unit's certificate) of `{"version": 7, "systemId": ...,
"supportedProtocols": ["wss"]}` answers `{"connectionInfo": ["wss://..."], "authToken": ...,
"nextRequestDelay": ms}`. The answer is kept, and every dial uses it, until `nextRequestDelay`
has passed, the cloud refused its token (401, `unauthorized`) or every URL in it failed
(`exhausted`); then the next `targets()` asks again. An answer without URLs means "not now":
no discovery is sent again before its `nextRequestDelay`.

`parse_answer` is the pure part (tested without sockets); `Discovery` is the thin HTTP
adapter, and `discovery_source` is what the agent calls at start: identity first (provisioning
with a token when there is none), then a `Discovery` for the link.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ...errors import CertificateError, ConfigError, LinkError, certificate_failure
from ...iam.identity import Identity, check_https_url, ensure_identity
from ...logs import get_logger
from .targets import Target

log = get_logger("communication.discovery")

PROTOCOL_VERSION = 7
# Without a nextRequestDelay, an answer is used this long before discovery runs again.
DEFAULT_REUSE_S = 600.0


@dataclass(frozen=True)
class DiscoveryAnswer:
    """A checked discovery answer."""

    urls: tuple[str, ...]
    token: str
    next_request_s: float


def request_body(system_id: str) -> dict[str, object]:
    return {"version": PROTOCOL_VERSION, "systemId": system_id, "supportedProtocols": ["wss"]}


def parse_answer(body: object) -> DiscoveryAnswer:
    """The wss URLs, token and delay of a discovery answer (keys case-insensitive, as AosCore
    reads them; URLs that are not wss are skipped: this unit dials nothing else).

    Raises:
        LinkError: the answer is not a JSON object, or its fields have the wrong types.
    """
    if not isinstance(body, dict):
        raise LinkError("the discovery answer is not a JSON object")
    fields = {str(k).lower(): v for k, v in body.items() if v is not None}
    urls = fields.get("connectioninfo", [])
    token = fields.get("authtoken", "")
    delay = fields.get("nextrequestdelay", DEFAULT_REUSE_S * 1000)
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise LinkError("the discovery answer's connectionInfo is not a list of URLs")
    if not isinstance(token, str):
        raise LinkError("the discovery answer's authToken is not a string")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise LinkError(f"the discovery answer's nextRequestDelay {delay!r} is not a delay in ms")
    wss = tuple(u for u in urls if urlsplit(u).scheme == "wss" and urlsplit(u).hostname)
    skipped = [u for u in urls if u not in wss]
    if skipped:
        log.warning("discovery.urls_skipped", urls=skipped, reason="not wss")
    if wss and not token:
        raise LinkError("the discovery answer has URLs but no authToken")
    return DiscoveryAnswer(wss, token, delay / 1000)


class Discovery:
    """A `TargetSource` that finds the cloud by discovery.

    Args:
        url: the discovery endpoint (https).
        identity: the unit's identity: its system id, and the certificate it presents.
        cloud_ca: a CA to trust for the cloud, besides the system's and the identity's.
        timeout_s: how long one discovery request may take.
        clock: monotonic seconds (a test's clock).
        transport: an httpx transport (tests).

    Raises:
        ConfigError: `url` is not https, or the identity's files cannot be used.
    """

    def __init__(
        self,
        url: str,
        identity: Identity,
        *,
        cloud_ca: Path | None = None,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = check_https_url(url, "discovery URL")
        self.identity = identity
        self.cloud_ca = cloud_ca
        self.timeout_s = timeout_s
        self.ssl_context: ssl.SSLContext = identity.client_context(cloud_ca)
        self._clock = clock
        self._transport = transport
        self._answer: DiscoveryAnswer | None = None
        self._until = 0.0  # when the kept answer is stale (or "not now" ends)

    @property
    def system_id(self) -> str:
        return self.identity.system_id

    async def targets(self) -> list[Target]:
        """The wss URLs to dial, best first, each with the bearer token and the mutual-TLS
        context; runs discovery when the kept answer is stale or was refused.

        Raises:
            CertificateError: the discovery server's certificate does not verify, or it refused
                the unit's (retry on the slow schedule only).
            LinkError: discovery failed (unreachable, refused, a bad answer, or no URL now).
        """
        now = self._clock()
        if self._answer is None or now >= self._until:
            self._answer = None
            answer = await self._discover()
            self._until = self._clock() + answer.next_request_s
            self._answer = answer
        if not self._answer.urls:
            raise LinkError(f"discovery gave no wss URL; asking again in {self._until - now:.0f} s")
        headers = {"Authorization": f"Bearer {self._answer.token}"}
        return [Target(url, headers, self.ssl_context) for url in self._answer.urls]

    def unauthorized(self, target: Target) -> None:
        """The cloud refused the token: the next `targets()` runs discovery again."""
        if self._answer is not None and target.url in self._answer.urls:
            log.info("discovery.token_refused", url=target.url, next="discovery")
            self._answer = None

    def exhausted(self) -> None:
        """Every URL of the last answer failed: the next `targets()` runs discovery again
        (PROTOCOL.md: the next URL, then discovery), instead of keeping a list that failed."""
        if self._answer is not None:
            log.info("discovery.urls_failed", urls=list(self._answer.urls), next="discovery")
            self._answer = None

    async def _discover(self) -> DiscoveryAnswer:
        try:
            async with httpx.AsyncClient(
                verify=self.ssl_context,
                timeout=self.timeout_s,
                transport=self._transport,
                trust_env=False,
            ) as client:
                response = await client.post(self.url, json=request_body(self.system_id))
        except httpx.HTTPError as exc:
            if certificate_failure(exc):
                log.error("discovery.certificate_failed", url=self.url, error=str(exc))
                raise CertificateError(
                    f"discovery at {self.url}: a certificate did not verify ({exc}); check the "
                    "cloud's CA (--cloud-ca) and this unit's identity"
                ) from exc
            raise LinkError(f"discovery at {self.url} failed: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise LinkError(
                f"discovery at {self.url} answered HTTP {response.status_code}: "
                f"{cloud_reason(response)}"
            )
        try:
            body = response.json()
        except ValueError:
            raise LinkError(f"discovery at {self.url} did not answer JSON") from None
        answer = parse_answer(body)
        log.info(
            "discovery.answered",
            unit=self.system_id,
            urls=list(answer.urls),
            next_s=round(answer.next_request_s, 1),
        )
        return answer


def cloud_reason(response: httpx.Response) -> str:
    """Why the cloud refused a request: its JSON `error`, else the start of the body."""
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


async def discovery_source(
    data_dir: Path,
    *,
    discovery_url: str | None,
    provision_token: str | None = None,
    cloud_ca: Path | None = None,
) -> tuple[str, Discovery]:
    """The unit's system id and the `TargetSource` its cloud link dials through: the stored
    identity (or one provisioned now with `provision_token`), and discovery at
    `discovery_url` (or the URL the unit was provisioned through).

    Raises:
        ConfigError: no identity and no token, no discovery URL, or unusable files.
        ProvisioningError: the cloud refused the token (wrong or used already).
        CertificateError, LinkError: provisioning could not reach the cloud.
    """
    if discovery_url is not None:
        check_https_url(discovery_url, "--discovery")
    identity = await ensure_identity(
        data_dir, token=provision_token, discovery_url=discovery_url, cloud_ca=cloud_ca
    )
    url = discovery_url or identity.discovery_url
    if url is None:
        raise ConfigError("no discovery URL: pass --discovery")
    return identity.system_id, Discovery(url, identity, cloud_ca=cloud_ca)
