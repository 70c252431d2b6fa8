"""One tree of exceptions for the whole agent.

- AosError: base of everything we raise on purpose.
  - LocalError: we misused something (a bug or a misconfiguration on this unit).
    - ConfigError: a bad command-line argument or configuration value.
    - StorageError: the database refused a step (schema, migration, corruption).
  - RemoteError: the other side sent something we cannot accept.
    - ProtocolError: a message that does not follow AosCloud v7 (names the JSON path).
    - BlobError: a blob that cannot be fetched or does not match its digest.
  - RuntimeEngineError: the container engine failed an operation.
  - LinkError: the cloud link is down or timed out.

`is_retryable` is the one place that decides whether an error is worth another try,
as websockets' `process_exception` does for connections.
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


class RuntimeEngineError(AosError):
    """The container engine failed an operation."""

    code = AosCode.RUNTIME


class LinkError(AosError):
    """The cloud link is down, or an answer did not come in time."""

    code = AosCode.TIMEOUT


def is_retryable(exc: BaseException) -> bool:
    """Whether an operation that raised `exc` is worth trying again later.

    Certificate failures and bad input are fatal: trying again gives the same answer.
    Network hiccups and timeouts are transient.
    """
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False
    if isinstance(exc, (ProtocolError, ConfigError, StorageError)):
        return False
    if isinstance(exc, BlobError):
        return exc.code != AosCode.INVALID_CHECKSUM
    return isinstance(exc, (LinkError, OSError, TimeoutError, RuntimeEngineError))
