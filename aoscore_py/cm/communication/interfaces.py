"""What the cloud link offers the other components, and what it needs from them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ...protocol import BlobUrlInfo, Message


class CloudSender(Protocol):
    """Sends messages that expect an ack (resent on timeout, up to three tries)."""

    async def send(self, message: Message) -> str | None:
        """Send `message`; returns its txn, or None when the link is down (not queued)."""
        ...


class BlobUrlSource(Protocol):
    """Asks the cloud where blobs can be downloaded (requestBlobUrls / blobUrls)."""

    async def request_blob_urls(self, digests: Sequence[str]) -> list[BlobUrlInfo]: ...


class MessageHandler(Protocol):
    """Takes a message from the cloud; returns once it is safe to ack it.

    Raises:
        AosError: the message is refused; the link nacks it with the error.
    """

    async def __call__(self, message: Message, arrived: float) -> None: ...
