"""The one retry policy, as the desired status handler applies it, on a fake clock.

A cycle that failed for a transient reason is tried again with backoff (5 s doubling to 5 min);
one that failed only for permanent reasons is not: the unit reports it and waits for a new
desired status or an operator's retry. Ten minutes pass in microseconds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from aoscore_py.blobs.download import DownloadPolicy
from aoscore_py.blobs.store import BlobStore
from aoscore_py.cloud.oci import OciImage, build_test_image
from aoscore_py.cm.imagemanager.manager import ImageManager, ImagePolicy
from aoscore_py.crypto.pki import Pki, init_pki
from aoscore_py.errors import AosCode, AosError, Retry, classify, classify_code
from aoscore_py.protocol import (
    BlobUrlInfo,
    DesiredItem,
    DesiredStatus,
    ErrorInfo,
    Identity,
    ItemState,
)

from .rig import Rig, desired, same_as
from .stubs import settle

TEN_MINUTES = 600.0
FIRST, SECOND = desired("1.0.0"), desired("2.0.0")
PERMANENT = (AosCode.INVALID_CHECKSUM, AosCode.NOT_SUPPORTED, AosCode.INVALID_ARGUMENT)
TRANSIENT = (AosCode.FAILED, AosCode.NO_MEMORY, AosCode.TIMEOUT, AosCode.NOT_FOUND)


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path / "data")
    yield rig
    await rig.close()


def failing(code: AosCode) -> Callable[[DesiredItem], ErrorInfo]:
    def outcome(item: DesiredItem) -> ErrorInfo:
        return ErrorInfo(int(code), 0, f"{item.item.key}: failed with {code.name}")

    return outcome


async def first_cycle(rig: Rig, ds: DesiredStatus = FIRST) -> None:
    handler = rig.build()
    await handler.start()
    await handler.accept(ds, time.monotonic())
    await settle(handler)


@pytest.mark.parametrize("code", TRANSIENT, ids=lambda c: c.name)
async def test_a_transient_failure_is_retried_with_backoff(rig: Rig, code: AosCode) -> None:
    rig.images.outcome = failing(code)
    await first_cycle(rig)
    assert rig.handler is not None and rig.handler.failure is Retry.TRANSIENT

    await rig.clock.advance(TEN_MINUTES, rig.handler)

    # 5, 10, 20, 40, 80 and 160 s have passed in ten minutes; the 300 s wait is under way.
    assert rig.clock.slept == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0]
    assert len(rig.images.downloads) == 7
    assert all(reason == "cycle ended in none" for reason in rig.status.reasons)


@pytest.mark.parametrize("code", PERMANENT, ids=lambda c: c.name)
async def test_a_permanent_failure_is_not_retried(rig: Rig, code: AosCode) -> None:
    rig.images.outcome = failing(code)
    await first_cycle(rig)
    assert rig.handler is not None and rig.handler.failure is Retry.PERMANENT

    await rig.clock.advance(TEN_MINUTES, rig.handler)

    assert rig.clock.slept == []
    assert rig.images.downloads == [FIRST]
    assert rig.status.reasons == ["cycle ended in none"], "the failure was reported once"
    assert rig.machine.payload is not None
    assert rig.machine.payload["failed_items"] == ["svc"]
    assert rig.machine.payload["retry"] == "permanent"


async def test_one_transient_failure_among_permanent_ones_is_retried(rig: Rig) -> None:
    extra = DesiredItem(Identity(id="other", type="service"), "1.0.0", "sha256:" + "c" * 64)
    two = replace(FIRST, items=(*FIRST.items, extra))

    def outcome(item: DesiredItem) -> ErrorInfo:
        code = AosCode.INVALID_CHECKSUM if item.item.key == "svc" else AosCode.TIMEOUT
        return ErrorInfo(int(code), 0, "no")

    rig.images.outcome = outcome
    await first_cycle(rig, two)
    assert rig.handler is not None and rig.handler.failure is Retry.TRANSIENT
    assert rig.images.skipped == [()]
    await rig.clock.advance(5.0, rig.handler)
    assert len(rig.images.downloads) == 2
    assert rig.images.skipped[-1] == ("svc",), "the item that failed for good is not refetched"


async def test_a_new_desired_status_tries_every_item_again(rig: Rig) -> None:
    extra = DesiredItem(Identity(id="other", type="service"), "1.0.0", "sha256:" + "c" * 64)

    def outcome(item: DesiredItem) -> ErrorInfo:
        code = AosCode.INVALID_CHECKSUM if item.item.key == "svc" else AosCode.TIMEOUT
        return ErrorInfo(int(code), 0, "no")

    rig.images.outcome = outcome
    await first_cycle(rig, replace(FIRST, items=(*FIRST.items, extra)))
    assert rig.handler is not None
    await rig.handler.accept(replace(SECOND, items=(*SECOND.items, extra)), time.monotonic())
    await settle(rig.handler)
    assert rig.images.skipped[-1] == (), "permanent for that desired status, not for this one"


async def test_a_retry_the_store_refuses_to_start_is_tried_again(rig: Rig) -> None:
    rig.images.outcome = failing(AosCode.NO_MEMORY)
    await first_cycle(rig)
    assert rig.handler is not None and rig.storage is not None
    full_disk(rig)
    await rig.clock.advance(5.0, rig.handler)
    assert len(rig.images.downloads) == 1, "the retry could not start"
    assert rig.clock.waiting == 1, "and is tried again later"

    rig.storage.db.execute_sql("DROP TRIGGER full")
    rig.images.outcome = lambda _item: None
    await rig.clock.advance(TEN_MINUTES, rig.handler)
    assert len(rig.images.downloads) == 2 and rig.handler.failure is None


async def test_a_desired_status_that_cannot_be_stored_leaves_the_retry_in_place(
    rig: Rig,
) -> None:
    rig.images.outcome = failing(AosCode.TIMEOUT)
    await first_cycle(rig)
    assert rig.handler is not None and rig.storage is not None
    rig.storage.db.execute_sql(
        "CREATE TRIGGER full_ds BEFORE INSERT ON desired_status "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )
    with pytest.raises(AosError) as refused:
        await rig.handler.accept(SECOND, time.monotonic())
    assert refused.value.code == AosCode.NO_MEMORY
    assert rig.handler.desired == FIRST
    assert rig.clock.waiting == 1, "the first desired status's retry is still scheduled"
    await rig.clock.advance(5.0, rig.handler)
    assert rig.images.downloads == [FIRST, FIRST]


def full_disk(rig: Rig) -> None:
    """Every move of the cycle is refused, as a full disk refuses the journal's insert."""
    assert rig.storage is not None
    rig.storage.db.execute_sql(
        "CREATE TRIGGER full BEFORE INSERT ON sm_journal "
        "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
    )


async def test_the_same_desired_status_again_does_not_retry_a_permanent_failure(rig: Rig) -> None:
    rig.images.outcome = failing(AosCode.INVALID_CHECKSUM)
    await first_cycle(rig)
    assert rig.handler is not None

    await rig.handler.accept(same_as(FIRST), time.monotonic())
    assert await rig.status.next_report() == "desired status needs no update"
    await rig.clock.advance(TEN_MINUTES, rig.handler)
    assert rig.images.downloads == [FIRST]


async def test_the_same_desired_status_again_retries_a_transient_failure_at_once(
    rig: Rig,
) -> None:
    rig.images.outcome = failing(AosCode.FAILED)
    await first_cycle(rig)
    assert rig.handler is not None

    await rig.handler.accept(same_as(FIRST), time.monotonic())
    await rig.clock.advance(0.0, rig.handler)
    assert len(rig.images.downloads) == 2


async def test_a_new_desired_status_after_a_permanent_failure_runs_a_cycle(rig: Rig) -> None:
    rig.images.outcome = failing(AosCode.NOT_SUPPORTED)
    await first_cycle(rig)
    assert rig.handler is not None
    rig.images.outcome = lambda _item: None

    await rig.handler.accept(SECOND, time.monotonic())
    await settle(rig.handler)
    assert rig.images.downloads == [FIRST, SECOND]
    assert rig.handler.failure is None


async def test_an_operator_retry_runs_a_permanently_failed_cycle_again(rig: Rig) -> None:
    rig.images.outcome = failing(AosCode.INVALID_CHECKSUM)
    await first_cycle(rig)
    assert rig.handler is not None
    rig.images.outcome = lambda _item: None

    assert await rig.handler.retry()
    await settle(rig.handler)
    assert rig.images.downloads == [FIRST, FIRST]
    assert rig.handler.failure is None
    assert rig.machine.journal()[-7].note == "retry asked by an operator"


async def test_an_operator_retry_is_refused_while_a_cycle_runs(rig: Rig) -> None:
    handler = await rig.hold_in(FIRST, "downloading")
    assert not await handler.retry()
    assert rig.images.gate.cancelled == 0


@pytest.mark.parametrize(
    ("code", "retried"),
    [(AosCode.INVALID_CHECKSUM, False), (AosCode.TIMEOUT, True)],
    ids=["permanent", "transient"],
)
async def test_a_restart_keeps_the_failure_class(rig: Rig, code: AosCode, retried: bool) -> None:
    rig.images.outcome = failing(code)
    await first_cycle(rig)
    assert rig.handler is not None
    await rig.handler.stop()

    handler = rig.build()
    await handler.start()
    await rig.clock.advance(0.0, handler)
    assert len(rig.images.downloads) == (2 if retried else 1)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (AosError("the chain is not trusted", code=AosCode.INVALID_ARGUMENT), Retry.PERMANENT),
        (AosError("the node did not answer", code=AosCode.TIMEOUT), Retry.TRANSIENT),
        (RuntimeError("a bug"), Retry.TRANSIENT),
    ],
    ids=["permanent", "transient", "unexpected"],
)
async def test_a_failed_phase_follows_the_policy(
    rig: Rig, error: BaseException, expected: Retry
) -> None:
    rig.launcher.launch_error = error
    await first_cycle(rig)
    assert rig.handler is not None and rig.handler.failure is expected
    assert rig.machine.phase == ("failed" if isinstance(error, RuntimeError) else "none")

    await rig.clock.advance(TEN_MINUTES, rig.handler)
    launches = len(rig.launcher.launches)
    assert launches == (7 if expected is Retry.TRANSIENT else 1)


async def test_a_cycle_that_succeeds_after_retries_starts_the_backoff_again(rig: Rig) -> None:
    rig.images.outcome = failing(AosCode.FAILED)
    await first_cycle(rig)
    assert rig.handler is not None
    await rig.clock.advance(5.0 + 10.0, rig.handler)
    assert rig.clock.slept == [5.0, 10.0, 20.0]

    rig.images.outcome = lambda _item: None
    await rig.clock.advance(20.0, rig.handler)
    assert rig.handler.failure is None
    rig.images.outcome = failing(AosCode.FAILED)
    await rig.handler.accept(SECOND, time.monotonic())
    await settle(rig.handler)
    assert rig.clock.slept[-1] == 5.0


@pytest.mark.parametrize("code", PERMANENT)
def test_permanent_codes(code: AosCode) -> None:
    assert classify_code(code) is Retry.PERMANENT
    assert classify(AosError("x", code=code)) is Retry.PERMANENT


@pytest.mark.parametrize("code", TRANSIENT)
def test_transient_codes(code: AosCode) -> None:
    assert classify_code(code) is Retry.TRANSIENT
    assert classify(AosError("x", code=code)) is Retry.TRANSIENT


class TamperingCloud:
    """Answers requestBlobUrls truthfully but serves one blob with a byte flipped (or all of
    them signed over other bytes); counts every byte it serves."""

    def __init__(
        self,
        pki: Pki,
        image: OciImage,
        *,
        tamper: str | None,
        wrong_sign: bool,
        unavailable: OciImage | None = None,
    ) -> None:
        self.pki = pki
        self.blobs = dict(image.blobs)
        self.tamper = tamper
        self.wrong_sign = wrong_sign
        # A second item whose every blob answers 503: a transient failure beside the refusal.
        # (its blobs the first image shares, such as the busybox layer, are served as usual)
        mine = dict(unavailable.blobs) if unavailable else {}
        self.unavailable = {d for d in mine if d not in self.blobs}
        self.blobs.update(mine)
        self.served: dict[str, int] = {}

    async def request_blob_urls(self, digests: Sequence[str]) -> list[BlobUrlInfo]:
        out = []
        for d in digests:
            sha = bytes.fromhex(d.split(":")[1])
            signed = hashlib.sha256(b"other bytes").digest() if self.wrong_sign else sha
            out.append(
                BlobUrlInfo(
                    d,
                    (f"http://blobs.test/{d}",),
                    sha,
                    len(self.blobs[d]),
                    None,
                    self.pki.sign({"sha256": signed}),
                )
            )
        return out

    def handle(self, request: httpx.Request) -> httpx.Response:
        digest = request.url.path.lstrip("/")
        if digest in self.unavailable:
            return httpx.Response(503)
        body = self.blobs[digest]
        if digest == self.tamper:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        self.served[digest] = self.served.get(digest, 0) + len(body)
        return httpx.Response(200, content=body)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return init_pki(tmp_path_factory.mktemp("pki"), "ec")


@pytest.fixture(scope="module")
def image() -> OciImage:
    return build_test_image("tampered", extra_layer_bytes=200_000)


@pytest.fixture(scope="module")
def flaky() -> OciImage:
    return build_test_image("flaky")


@pytest.mark.parametrize(
    "fault", ["tampered layer", "wrong signature", "tampered layer, another item unavailable"]
)
async def test_a_refused_item_is_fetched_once_in_ten_minutes(
    tmp_path: Path, pki: Pki, image: OciImage, flaky: OciImage, fault: str
) -> None:
    """The real image manager and downloader over HTTP (MockTransport), a real store. With an
    unavailable second item the cycle is retried with backoff for it, and the refused one is
    still not fetched again."""
    big = max(image.layer_digests, key=lambda d: len(image.blobs[d]))
    beside = "unavailable" in fault
    cloud = TamperingCloud(
        pki,
        image,
        tamper=big if fault.startswith("tampered layer") else None,
        wrong_sign=fault == "wrong signature",
        unavailable=flaky if beside else None,
    )
    rig = Rig(tmp_path / "data")
    rig.build()
    assert rig.storage is not None
    http = httpx.AsyncClient(transport=httpx.MockTransport(cloud.handle))
    rig.images = ImageManager(  # type: ignore[assignment]
        rig.storage,
        BlobStore(tmp_path / "data"),
        cloud,
        http,
        ImagePolicy(trusted_roots=(pki.root,), download=DownloadPolicy(rounds=1)),
    )
    items = [replace(FIRST.items[0], index_digest=image.index_digest)]
    if beside:
        items.append(DesiredItem(Identity(id="flaky", type="service"), "1.0.0", flaky.index_digest))
    ds = replace(
        FIRST,
        items=tuple(items),
        certificates=pki.certificates(),
        certificate_chains=(pki.chain(),),
    )
    try:
        await first_cycle(rig, ds)
        assert rig.handler is not None
        await rig.clock.advance(TEN_MINUTES, rig.handler)
    finally:
        await rig.close()
        await http.aclose()

    (record,) = [r for r in rig.images.records() if r.item_id == "svc"]
    assert record.state is ItemState.FAILED and record.error is not None
    assert record.error.aos_code == AosCode.INVALID_CHECKSUM
    refused = big if fault.startswith("tampered layer") else image.index_digest
    assert cloud.served[refused] == len(image.blobs[refused]), "served once, in ten minutes"
    if beside:
        assert rig.clock.slept == [5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 300.0], "flaky retried"
    else:
        assert rig.clock.slept == [], "no retry was even scheduled"
    print(f"\n{fault}: {cloud.served[refused]} bytes of {refused[:19]} served in 10 min")


async def test_a_move_the_store_refuses_is_tried_again_from_the_committed_phase(
    rig: Rig,
) -> None:
    """A full disk under the journal: the move out of launching fails, the cycle stays in the
    phase it last committed, and runs it again after the backoff."""
    handler = await rig.hold_in(FIRST, "launching")
    assert rig.storage is not None
    full_disk(rig)
    rig.launcher.launch_gate.opened.set()
    await settle(handler)
    assert rig.machine.phase == "launching" and handler.idle
    assert rig.clock.waiting == 1, "a new try is scheduled"

    rig.storage.db.execute_sql("DROP TRIGGER full")
    rig.open_gates()
    await rig.clock.advance(5.0, handler)
    assert rig.machine.phase == "none"
    assert len(rig.launcher.launches) == 2, "launching ran again"
