"""Fetching one blob into the store: every URL, retries with backoff, HTTP Range resume.

A blob's bytes go to its partial file (partial.py), hashed as they arrive. An interrupted
transfer (a reset, a timeout, a 5xx, the agent killed) leaves the partial file; the next attempt,
in this process or the next, hashes what is there and asks for the rest with `Range`. The URLs
are tried in order within a round; a round in which no URL succeeded is followed by a backoff
with jitter, and a round that moved any bytes forward resets the count. Only then is the blob
failed. Which HTTP answers are worth another try is the retry policy's call (errors.py).

When the bytes are all there, they are checked against the digest and handed to a verifier (the
signature check) before the partial file is committed, so the store only ever holds verified
blobs. Cancelling stops at the next await: partial files stay for the next attempt.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from statemachine import crashpoint

from ..backoff import Backoff
from ..errors import AosCode, BlobError, transient_http_status
from ..fsutil import NO_SPACE
from ..logs import get_logger
from ..protocol import BlobUrlInfo
from .crashpoints import BLOB_TRANSFER
from .partial import IO_POOL, PartialFile
from .store import BlobStore, digest_hex

log = get_logger("blobs.download")

Verifier = Callable[[Mapping[str, bytes]], None]


@dataclass(frozen=True)
class DownloadPolicy:
    """How hard and how wide blob downloads go."""

    parallel: int = 4
    rounds: int = 5
    backoff_initial_s: float = 0.5
    backoff_cap_s: float = 15.0
    chunk_bytes: int = 256 << 10
    # The kernel's receive buffer per transfer (SO_RCVBUF; 0 leaves it to autotuning, which
    # grows it to megabytes on a fast link). Bytes there are lost when the agent is killed, and
    # on a small device they are memory: 256 KiB still carries about 5 MB/s per transfer at a
    # 50 ms round trip.
    receive_buffer_bytes: int = 256 << 10
    progress_interval_s: float = 2.0


@dataclass
class Transfer:
    """One blob being fetched, as progress reports see it."""

    digest: str
    size: int
    present: int = 0
    resumed_from: int = 0
    fetched: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def rate(self) -> float:
        """Bytes per second fetched over the network since this transfer began."""
        return self.rate_at(time.monotonic())

    def rate_at(self, now: float) -> float:
        """`rate` at monotonic time `now` (a pure reading, for reports and their tests)."""
        elapsed = now - self.started
        return self.fetched / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class Fetched:
    """A blob committed to the store."""

    digest: str
    size: int
    mtime_ns: int
    fetched: int
    resumed_from: int
    url: str
    seconds: float


class _Retry(Exception):
    """This attempt failed in a way that the same URL may get right later."""


class _Refused(Exception):
    """This URL will not give this blob: go to the next one without retrying it."""


class _WrongBytes(_Refused):
    """This URL gives other bytes than the blob (more than its size): like a digest mismatch,
    asking again gives the same answer."""


def widen_http_reads(read_bytes: int) -> None:
    """Let httpcore read up to `read_bytes` per call instead of its 64 KiB.

    Each read costs about the same Python work whatever its size, and on a fast link most of a
    blob download's CPU went to those calls (1,650 reads for 50 MiB). The attribute is public
    and process-wide; only ever raised here.
    """
    conn = httpcore.AsyncHTTP11Connection
    conn.READ_NUM_BYTES = max(conn.READ_NUM_BYTES, read_bytes)


def blob_client(policy: DownloadPolicy, timeout_s: float, tls: ssl.SSLContext) -> httpx.AsyncClient:
    """The HTTP client for blob URLs: enough connections for every transfer at once, the
    policy's receive buffer, no proxy settings from the environment (the unit's configuration
    decides), and `timeout_s` as the longest a transfer may go without a byte."""
    options = []
    if policy.receive_buffer_bytes:
        options.append((socket.SOL_SOCKET, socket.SO_RCVBUF, policy.receive_buffer_bytes))
    transport = httpx.AsyncHTTPTransport(
        verify=tls,
        limits=httpx.Limits(max_connections=max(10, 2 * policy.parallel)),
        socket_options=options,
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout_s, connect=10.0),
        trust_env=False,
        follow_redirects=True,
    )


def _content_range_start(value: str | None) -> int | None:
    """The first byte of `bytes <start>-<end>/<total>`, or None when unreadable."""
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


class Downloader:
    """Fetches blobs into a BlobStore, at most `policy.parallel` at a time.

    Args:
        http: the client for blob URLs.
        store: where partial and complete blobs live.
        policy: retries, parallelism, chunking.
        sleep: how to wait between rounds (tests pass a fast one).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        store: BlobStore,
        policy: DownloadPolicy | None = None,
        *,
        sleep: Callable[[float], Any] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._store = store
        self.policy = policy or DownloadPolicy()
        widen_http_reads(self.policy.chunk_bytes)
        self._sleep = sleep
        self._slots = asyncio.Semaphore(self.policy.parallel)
        self.active: dict[str, Transfer] = {}
        self.fetched_bytes = 0
        """Bytes received for blobs by this downloader, ever (the operator's counter)."""

    async def fetch(
        self, info: BlobUrlInfo, hash_names: Sequence[str], verify: Verifier
    ) -> Fetched:
        """Download `info`'s blob, check its digest and `verify` it, and commit it.

        Raises:
            BlobError: every URL failed for `policy.rounds` rounds in a row (failed), or no
                URL gave bytes matching the digest (invalidChecksum), or the verifier refused
                them, or the disk is full (noMemory).
        """
        async with self._slots:
            partial = PartialFile(self._store, info.digest, hash_names)
            transfer = Transfer(info.digest, info.size)
            self.active[info.digest] = transfer
            try:
                return await self._fetch(info, partial, transfer, verify)
            except OSError as exc:
                if exc.errno in NO_SPACE:
                    raise BlobError(
                        f"blob {info.digest}: no space left on {self._store.root} after "
                        f"{partial.size} of {info.size} bytes",
                        code=AosCode.NO_MEMORY,
                    ) from exc
                raise
            finally:
                partial.close()
                self.active.pop(info.digest, None)

    async def _fetch(
        self, info: BlobUrlInfo, partial: PartialFile, transfer: Transfer, verify: Verifier
    ) -> Fetched:
        want = digest_hex(info.digest)
        size = info.size or None
        transfer.present = transfer.resumed_from = await partial.open(size)
        backoff = Backoff(self.policy.backoff_initial_s, cap=self.policy.backoff_cap_s)
        bad_urls: set[str] = set()
        mismatched: set[str] = set()  # URLs whose bytes are not the blob's (digest or size)
        errors: dict[str, str] = {}
        rounds = 0
        fresh_retry = transfer.resumed_from > 0
        while True:
            progressed = False
            for url in info.urls:
                if url in bad_urls:
                    continue
                before = partial.size
                try:
                    if size is None or partial.size < size:
                        await self._attempt(url, info, partial, transfer)
                except _Refused as exc:
                    bad_urls.add(url)
                    if isinstance(exc, _WrongBytes):
                        mismatched.add(url)
                    errors[url] = str(exc)
                    self._url_failed(info, url, exc, "trying the next URL")
                    continue
                except _Retry as exc:
                    progressed = progressed or partial.size > before
                    errors[url] = str(exc)
                    self._url_failed(info, url, exc, "trying the next URL, then again")
                    continue
                hashes = await partial.finish()
                if hashes["sha256"].hex() == want:
                    verify(hashes)
                    stat = await asyncio.wrap_future(
                        IO_POOL.submit(self._store.commit, info.digest)
                    )
                    return Fetched(
                        info.digest,
                        stat.st_size,
                        stat.st_mtime_ns,
                        transfer.fetched,
                        transfer.resumed_from,
                        url,
                        time.monotonic() - transfer.started,
                    )
                if fresh_retry:
                    # The bytes kept from an earlier run may be what is wrong: fetch it whole.
                    fresh_retry = False
                    errors[url] = "bytes resumed from an earlier attempt did not match"
                else:
                    bad_urls.add(url)
                    mismatched.add(url)
                    errors[url] = f"content hashes to sha256:{hashes['sha256'].hex()}"
                self._url_failed(info, url, errors[url], "discarding the bytes")
                partial.reset()
                transfer.present = 0
            if info.urls and bad_urls >= set(info.urls):
                raise self._give_up(info, errors, checksum=mismatched >= set(info.urls))
            rounds = 0 if progressed else rounds + 1
            if progressed:
                backoff.reset()
            if not info.urls or rounds >= self.policy.rounds:
                raise self._give_up(info, errors, checksum=False)
            delay = backoff.next()
            log.info(
                "blob.retry_scheduled",
                digest=info.digest,
                delay_s=round(delay, 2),
                round=rounds,
                of=self.policy.rounds,
                present=partial.size,
                size=info.size,
            )
            await self._sleep(delay)

    async def _attempt(
        self, url: str, info: BlobUrlInfo, partial: PartialFile, transfer: Transfer
    ) -> None:
        offset = partial.size
        # A blob is its bytes as stored: no content coding, so that Range offsets and the
        # digest both refer to the bytes that land in the partial file.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        try:
            async with self._http.stream("GET", url, headers=headers) as response:
                status = response.status_code
                if status == 206:
                    if _content_range_start(response.headers.get("content-range")) != offset:
                        partial.reset()
                        raise _Retry(f"HTTP 206 for another range than bytes={offset}-")
                elif status == 200:
                    if offset:
                        partial.reset()  # the server ignored Range: take the whole body
                elif status == 416 and offset:
                    partial.reset()
                    raise _Retry(f"HTTP 416 for bytes={offset}-; starting over")
                elif transient_http_status(status):
                    raise _Retry(f"HTTP {status}")
                else:
                    raise _Refused(f"HTTP {status}")
                coding = response.headers.get("content-encoding", "identity").lower()
                if coding != "identity":
                    raise _Refused(f"sent with Content-Encoding {coding}, not the bytes as stored")
                # Bytes are gathered into large writes, and what was gathered is written even
                # when the transfer breaks or is cancelled: every byte received is kept.
                chunks: list[bytes] = []
                gathered = 0
                try:
                    async for chunk in response.aiter_bytes():
                        chunks.append(chunk)
                        gathered += len(chunk)
                        if gathered >= self.policy.chunk_bytes:
                            batch, chunks, n, gathered = chunks, [], gathered, 0
                            await partial.write_async(batch)
                            self._took(n, info, partial, transfer)
                finally:
                    partial.settle()
                    if chunks:
                        partial.write(chunks)
                        self._took(gathered, info, partial, transfer)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        except ssl.SSLError as exc:
            # After a TLS 1.3 handshake a refused client certificate surfaces on the first read,
            # passed on raw by httpcore: this URL will not serve us as we are configured.
            raise _Refused(f"TLS: {exc}") from None
        if info.size and partial.size < info.size:
            raise _Retry(f"the body ended after {partial.size} of {info.size} bytes")

    def _took(self, n: int, info: BlobUrlInfo, partial: PartialFile, transfer: Transfer) -> None:
        """Account for `n` bytes just appended to the partial file."""
        before = partial.size - n
        transfer.fetched += n
        self.fetched_bytes += n
        transfer.present = partial.size
        if info.size and partial.size > info.size:
            partial.reset()
            transfer.present = 0
            raise _WrongBytes(f"sent more than the {info.size} bytes announced")
        half = info.size // 2
        if before < half <= partial.size < info.size:
            crashpoint(BLOB_TRANSFER)

    def _url_failed(self, info: BlobUrlInfo, url: str, error: object, next_step: str) -> None:
        log.warning(
            "blob.url_failed", digest=info.digest, url=url, error=str(error), next=next_step
        )

    def _give_up(self, info: BlobUrlInfo, errors: dict[str, str], checksum: bool) -> BlobError:
        detail = "; ".join(f"{url}: {err}" for url, err in errors.items()) or "no URLs given"
        if checksum:
            return BlobError(
                f"blob {info.digest}: no URL gave bytes matching the digest: {detail}",
                code=AosCode.INVALID_CHECKSUM,
            )
        return BlobError(f"blob {info.digest}: every URL failed: {detail}")
