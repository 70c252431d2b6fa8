"""What one `UpdateInstances` becomes: the specs to run, the instances failed, the answer.

Pure functions, no engine and no sockets, so the SM's central rule is tested in milliseconds:
an instance whose image cannot be fetched, or that asks for a runtime this node lacks, is
answered failed and the others go on; whatever that instance ran before keeps running (the CM
sees it failed at the version it asked for); the answer lists the instances in the CM's order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import AosCode, AosError, ProtocolError, Retry, classify_code
from ..nodes import ImageLayout, InstanceKey, InstanceSpec, InstanceStatus, wire
from ..nodes.proto import sm_pb2
from ..protocol import ErrorInfo, InstanceState
from .health import IMAGE_PULL, START_FAILURE
from .reporter import Meta


@dataclass(frozen=True)
class UpdatePlan:
    """What to do with one `UpdateInstances`.

    Attributes:
        specs: what the manager must run (an instance that cannot be prepared keeps the spec it
            ran before, if any, so its container keeps serving).
        failed: instances reported failed whatever the manager says of them.
        meta: item type and manifest digest of every instance asked for.
        order: the instances asked for, in the CM's order (the answer's).
        transient: some failure may go away by itself: worth trying again.
    """

    specs: tuple[InstanceSpec, ...]
    failed: Mapping[InstanceKey, InstanceStatus]
    meta: Mapping[InstanceKey, Meta]
    order: tuple[InstanceKey, ...]
    transient: bool


def refusal(request: wire.InstanceRequest) -> ErrorInfo | None:
    """Why this node cannot run `request` at all, or None: our SM offers one runtime, `docker`
    (an empty runtime id means the default)."""
    if request.runtime_id not in ("", wire.DOCKER_RUNTIME):
        return ErrorInfo(
            int(AosCode.NOT_SUPPORTED),
            0,
            f"{START_FAILURE}: runtime {request.runtime_id!r} is not on this node "
            f"(it offers {wire.DOCKER_RUNTIME!r})",
        )
    return None


def failed_status(node_id: str, request: wire.InstanceRequest, error: ErrorInfo) -> InstanceStatus:
    """Instance `request` reported failed with `error`, at the version the CM asked for."""
    return InstanceStatus(
        request.key,
        request.version,
        node_id,
        InstanceState.FAILED,
        error,
        runtime=request.runtime_id or wire.DOCKER_RUNTIME,
    )


def image_error(exc: AosError) -> ErrorInfo:
    """The errorInfo of an image that cannot be fetched (ErrImagePull, the blob error's code)."""
    return ErrorInfo(int(exc.code), 0, f"{IMAGE_PULL}: {exc.message}")


def plan_update(
    node_id: str,
    requests: Sequence[wire.InstanceRequest],
    images: Mapping[str, ImageLayout | AosError],
    previous: Mapping[InstanceKey, InstanceSpec],
) -> UpdatePlan:
    """The specs and failures for `requests`, given each manifest's layout or fetch error.

    Args:
        node_id: this node.
        requests: the instances to start, in the CM's order; a key named twice counts once
            (the first).
        images: manifest digest -> its layout, or why it cannot be had. A request whose digest
            is missing here is failed as not fetched.
        previous: the specs the manager runs now, by key.
    """
    specs: dict[InstanceKey, InstanceSpec] = {}
    failed: dict[InstanceKey, InstanceStatus] = {}
    meta: dict[InstanceKey, Meta] = {}
    transient = False
    for request in requests:
        key = request.key
        if key in meta:
            continue
        meta[key] = Meta(request.item_type, request.manifest_digest)
        error = refusal(request)
        if error is None:
            image = images.get(request.manifest_digest)
            if isinstance(image, ImageLayout):
                specs[key] = request.spec(image)
                continue
            if image is None:
                image = AosError(f"manifest {request.manifest_digest} was not fetched")
            error = image_error(image)
            transient = transient or classify_code(error.aos_code) is Retry.TRANSIENT
        failed[key] = failed_status(node_id, request, error)
        if key in previous:
            specs[key] = previous[key]  # what ran keeps running
    return UpdatePlan(tuple(specs.values()), failed, meta, tuple(meta), transient)


def answer_for(
    reports: Sequence[InstanceStatus], order: Sequence[InstanceKey], node_id: str
) -> list[InstanceStatus]:
    """The `UpdateInstancesStatus` of the instances asked for, in the CM's order; one the
    manager did not report is failed (it never is, unless the engine lost it meanwhile)."""
    by_key = {s.key: s for s in reports}
    missing = ErrorInfo(int(AosCode.NOT_FOUND), 0, "not reported by the runtime")
    return [
        by_key.get(key) or InstanceStatus(key, "", node_id, InstanceState.FAILED, missing)
        for key in order
    ]


def refused_answer(
    update: sm_pb2.UpdateInstances, node_id: str, error: ProtocolError
) -> list[InstanceStatus]:
    """The answer to an `UpdateInstances` refused whole: every start instance whose identity
    reads, failed with the reason (nothing was changed)."""
    info = ErrorInfo(int(error.code), 0, f"UpdateInstances refused: {error.message}")
    out = []
    for entry in update.start_instances:
        with contextlib.suppress(ProtocolError):
            key = wire.instance_key(entry.instance)
            out.append(InstanceStatus(key, entry.version, node_id, InstanceState.FAILED, info))
    return out
