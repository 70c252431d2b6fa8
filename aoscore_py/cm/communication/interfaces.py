"""What the cloud link offers the other components, and what it needs from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ...protocol import BlobUrlInfo, Message


class CloudSender(Protocol):
    """Sends messages that expect an ack, through the durable outbox (resent until acked)."""

    async def send(self, message: Message) -> str:
        """Queue `message` (committed) and send it when the link allows; returns its txn."""
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


@dataclass(frozen=True)
class OutboxEntry:
    """One message waiting for its ack, as stored (`id` gives the order)."""

    id: int
    txn: str
    message_type: str
    frame: bytes
    created_at: float
    seq: int | None = None


class OutboxStorage(Protocol):
    """Where the outbox's entries live (the agent's SQLite store)."""

    def outbox_append(
        self,
        txn: str,
        message_type: str,
        frame: bytes,
        created_at: float,
        seq: int | None,
        delete: Sequence[str],
    ) -> int:
        """Store one entry and delete the `delete` txns, in one transaction; returns its id."""
        ...

    def outbox_delete(self, txns: Sequence[str]) -> None:
        """Forget entries (acknowledged), in one transaction."""
        ...

    def outbox_entries(self) -> list[OutboxEntry]:
        """Every entry, oldest first."""
        ...
