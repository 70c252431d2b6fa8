"""One tree of exceptions for the whole agent.

- AosError: base of everything we raise on purpose.
  - LocalError: we misused something (a bug or a misconfiguration on this unit).
    - ConfigError: a bad command-line argument or configuration value.
    - StorageError: the database refused a step (schema, migration, corruption).
  - RemoteError: the other side sent something we cannot accept.
    - ProtocolError: a message that does not follow AosCloud v7 (names the JSON path).
    - BlobError: a blob that cannot be fetched or does not match its digest.
    - ProvisioningError: the cloud refused to provision this unit (a wrong or used token).
  - RuntimeEngineError: the container engine failed an operation.
  - LinkError: the cloud link is down or timed out.
    - CertificateError: a TLS peer's certificate failed verification (ours or the cloud's).

The retry policy lives here and nowhere else (as websockets' `process_exception` does for
connections): `classify` turns an exception, `classify_code` an errorInfo's aosCode (what a
stored item record or a node's answer carries) and `transient_http_status` an HTTP answer into
TRANSIENT (worth another try with backoff: a reset, a timeout, a 5xx, a node away, no space
yet) or PERMANENT for this desired status (a bad digest or signature, an unsupported platform
or algorithm, an invalid argument: trying again gives the same answer). The downloader, the
desired status handler and the cloud link all ask it.
"""

from __future__ import annotations

import enum
import ssl


class AosCode(enum.IntEnum):
    """AosCore's ErrorEnum: the `aosCode` of an errorInfo."""

    NONE = 0
    FAILED = 1
    RUNTIME = 2
    NO_MEMORY = 3
    OUT_OF_RANGE = 4
    NOT_FOUND = 5
    INVALID_ARGUMENT = 6
    TIMEOUT = 7
    ALREADY_EXIST = 8
    WRONG_STATE = 9
    INVALID_CHECKSUM = 10
    ALREADY_LOGGED_IN = 11
    NOT_SUPPORTED = 12
    EOF = 13
    CANCELED = 14


class AosError(Exception):
    """Base of every error the agent raises on purpose; carries an aosCode for errorInfo."""

    code: AosCode = AosCode.FAILED

    def __init__(self, message: str, *, code: AosCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class LocalError(AosError):
    """We misused something: a bug, or a misconfiguration of this unit."""


class ConfigError(LocalError):
    """A bad command-line argument or configuration value."""

    code = AosCode.INVALID_ARGUMENT


class StorageError(LocalError):
    """The database refused a step."""


class RemoteError(AosError):
    """The other side sent something we cannot accept."""


class ProtocolError(RemoteError):
    """A message that does not follow AosCloud v7.

    Args:
        path: JSON path of the offending value, such as ``$.data.items[0].item.id``.
        reason: what is wrong with it.
    """

    code = AosCode.INVALID_ARGUMENT

    def __init__(self, path: str, reason: str, *, code: AosCode | None = None) -> None:
        super().__init__(f"{path}: {reason}", code=code)
        self.path = path
        self.reason = reason


class BlobError(RemoteError):
    """A blob that cannot be fetched, or whose bytes do not match its digest."""


class ProvisioningError(RemoteError):
    """The cloud refused to provision this unit: the token is wrong or was used already.

    Trying again with the same token gives the same answer, so it is permanent.
    """

    code = AosCode.INVALID_ARGUMENT


class RuntimeEngineError(AosError):
    """The container engine failed an operation."""

    code = AosCode.RUNTIME


class LinkError(AosError):
    """The cloud link is down, or an answer did not come in time."""

    code = AosCode.TIMEOUT


class CertificateError(LinkError):
    """A TLS handshake with the cloud failed on a certificate: the cloud's does not verify
    against the CAs this unit trusts, or the cloud refused the unit's.

    Redialling at once gives the same answer (a clock, a CA or a revocation has to change
    first), so the link retries it only on its slow schedule; it is permanent for `classify`,
    like a raw `ssl.SSLCertVerificationError`.
    """

    code = AosCode.INVALID_ARGUMENT


class Retry(enum.Enum):
    """Whether a failure is worth another try."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"


# aosCodes that say "this input will never work": the blob's bytes or signature are wrong
# (invalidChecksum), the unit cannot handle it (notSupported: a platform, an algorithm, an
# encrypted blob), or it is malformed or refused by policy (invalidArgument). Everything else
# (failed, runtime, noMemory, timeout, notFound, ...) may go away by itself.
PERMANENT_CODES = frozenset(
    {AosCode.INVALID_CHECKSUM, AosCode.NOT_SUPPORTED, AosCode.INVALID_ARGUMENT}
)

# HTTP answers worth asking the same URL again for; any other non-2xx is that URL's refusal.
TRANSIENT_HTTP_STATUS = frozenset({408, 425, 429})


def classify_code(code: int) -> Retry:
    """The retry class of an errorInfo's aosCode."""
    return Retry.PERMANENT if code in PERMANENT_CODES else Retry.TRANSIENT


def classify(exc: BaseException) -> Retry:
    """The retry class of an exception: by its aosCode when it is ours; a certificate
    verification failure is permanent; anything else (OSError, timeouts, an unexpected error)
    is transient, so a bug or a hiccup is retried with backoff instead of wedging the unit."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Retry.PERMANENT
    if isinstance(exc, AosError):
        return classify_code(exc.code)
    return Retry.TRANSIENT


def transient_http_status(status: int) -> bool:
    """Whether an HTTP status is worth asking the same URL again for (a timeout, too many
    requests, a server error); 4xx answers are that URL's final word."""
    return status in TRANSIENT_HTTP_STATUS or status >= 500


# OpenSSL's reasons when the server refused our certificate (an alert it sent back), as opposed
# to a connection that broke: the TLS 1.2 and 1.3 alert names for an unknown, bad, revoked or
# missing client certificate.
_PEER_REFUSED_CERTIFICATE = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)


def certificate_failure(exc: BaseException) -> bool:
    """Whether `exc`, or an exception it was raised from, is a certificate failure: ours
    (`CertificateError`), the peer's certificate did not verify, or the peer refused ours.

    Client libraries wrap the `ssl` error (httpx in `ConnectError`, websockets re-raises it),
    so the chain of causes is walked.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (CertificateError, ssl.SSLCertVerificationError)):
            return True
        if isinstance(current, ssl.SSLError) and current.reason in _PEER_REFUSED_CERTIFICATE:
            return True
        current = current.__cause__ or current.__context__
    return False
