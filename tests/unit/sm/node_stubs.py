"""Doubles and builders for the SM's node tests (updates, reporting, `SmNode`): instances named
by one letter, a manager that runs what it is given at once, a blob cache with memory and a
link that records what it sends."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from aoscore_py.backoff import Backoff
from aoscore_py.errors import AosCode, AosError
from aoscore_py.nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus, wire
from aoscore_py.nodes.proto import sm_pb2
from aoscore_py.protocol import ErrorInfo, InstanceState
from aoscore_py.sm.node import SmNode
from aoscore_py.sm.nodeinfo import NodeResources, sm_info_message
from aoscore_py.sm.types import Platform

NODE = "node-1"
ACTIVE, ACTIVATING, FAILED = InstanceState.ACTIVE, InstanceState.ACTIVATING, InstanceState.FAILED


def key(item: str) -> InstanceKey:
    return InstanceKey(item, "s", 0)


def digest(item: str) -> str:
    return "sha256:" + (item.encode().hex() * 64)[:64]


def layout(item: str) -> ImageLayout:
    return ImageLayout(digest(item), digest(item), {}, "sha256:" + "c" * 64, ())


def request(item: str, version: str = "1.0", runtime: str = "docker") -> wire.InstanceRequest:
    return wire.InstanceRequest(key(item), "service", version, digest(item), runtime)


def spec(item: str, version: str = "1.0") -> InstanceSpec:
    return InstanceSpec(key(item), "service", version, layout(item))


def status(
    item: str, state: InstanceState = ACTIVE, version: str = "1.0", message: str | None = None
) -> InstanceStatus:
    error = ErrorInfo(int(AosCode.RUNTIME), 3, message) if message is not None else None
    return InstanceStatus(key(item), version, NODE, state, error)


CRASH = "CrashLoopBackOff: container keeps exiting (exit code 3, crash 1); last log: bye"


class FakeManager:
    """Runs what it is given at once (activating); a test sets states and errors."""

    def __init__(self, statuses: Sequence[InstanceStatus] = ()) -> None:
        self.statuses = {s.key: s for s in statuses}
        self.runs: list[list[InstanceSpec]] = []
        self.fail: Exception | None = None

    async def run_instances(self, specs: Sequence[InstanceSpec]) -> list[InstanceStatus]:
        if self.fail is not None:
            raise self.fail
        self.runs.append(list(specs))
        old = self.statuses
        self.statuses = {
            s.key: old[s.key]
            if s.key in old and old[s.key].version == s.version
            else InstanceStatus(s.key, s.version, NODE, ACTIVATING)
            for s in specs
        }
        return await self.instance_statuses()

    async def instance_statuses(self) -> list[InstanceStatus]:
        return [self.statuses[k] for k in sorted(self.statuses)]

    async def collect_images(self, keep: Sequence[str]) -> list[str]:
        return []


class FakeImages:
    """Layouts by manifest digest; a digest in `errors` raises that error."""

    def __init__(self) -> None:
        self.errors: dict[str, AosError] = {}
        self.asked: list[str] = []
        self.kept: list[list[str]] = []

    async def ensure(self, manifest_digest: str) -> ImageLayout:
        self.asked.append(manifest_digest)
        if manifest_digest in self.errors:
            raise self.errors[manifest_digest]
        item = next(i for i in "abcdefgh" if digest(i) == manifest_digest)
        return layout(item)

    def collect(self, keep_digests: Sequence[str]) -> list[str]:
        self.kept.append(list(keep_digests))
        return []


class RecordingLink:
    """The link's `send`: records what goes on stream `stream` (None: no stream open)."""

    def __init__(self) -> None:
        self.stream: int | None = 1
        self.sent: list[tuple[int, sm_pb2.SMOutgoingMessages]] = []

    def send(self, message: sm_pb2.SMOutgoingMessages, *, stream: int | None = None) -> bool:
        if self.stream is None or (stream is not None and stream != self.stream):
            return False
        self.sent.append((self.stream, message))
        return True

    def cases(self) -> list[str]:
        return [m.WhichOneof("SMOutgoingMessage") or "" for _, m in self.sent]

    def last(self, case: str):
        """The last message of `case` sent; None if none was."""
        found = (getattr(m, case) for _, m in reversed(self.sent) if m.HasField(case))
        return next(found, None)


class Harness:
    def __init__(self, manager: FakeManager, images: FakeImages, link: RecordingLink) -> None:
        self.manager, self.images, self.link = manager, images, link
        info = sm_info_message(NODE, Platform("linux", "amd64"), NodeResources())
        self.node = SmNode(
            NODE,
            manager,
            images,
            info,
            poll_s=0.01,
            retry=Backoff(0.02, cap=0.05, jitter=0.0),
        )
        self.node.link = link

    def update(self, *specs: InstanceSpec, stream: int = 1) -> None:
        self.node.received(wire.update_instances(specs, []), stream)

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                await asyncio.sleep(0.005)

    async def answered(self, count: int = 1) -> sm_pb2.UpdateInstancesStatus:
        await self.until(lambda: self.link.cases().count("update_instances_status") >= count)
        return self.link.last("update_instances_status")
