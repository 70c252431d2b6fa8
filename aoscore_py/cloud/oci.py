"""Small OCI test images built in memory, and a push to a registry's blob and manifest API.

There is no internet to pull from, so tests and the reference cloud make their own images: a
busybox root file system packed as a deterministic gzip layer (same inputs, same digests), an OCI
image config, manifest and index, and optionally AosCore's item config (quotas, requested
resources, runtimes), named by the manifest as `aosItemConfig`. The push uploads every one of
those as a blob, because the agent downloads index, manifest, config, item config and layers
alike from `/v2/<repo>/blobs/<digest>` (a registry serves a document there only when it was
uploaded as a blob), and then also registers manifest and index so the image stays pullable by
ordinary tools. `index_for` wraps any single manifest in an index (imports.py uses it too).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import platform
import random
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

from aoscore_py.blobs import oci
from aoscore_py.errors import RemoteError
from aoscore_py.logs import get_logger

INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
ITEM_CONFIG_MEDIA_TYPE = oci.ITEM_CONFIG_MEDIA_TYPE

DEFAULT_COMMAND = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 1 & wait $!; done"]
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "sleep", "cat", "echo", "true", "false", "test", "ls", "date")

# Every entry and the gzip header carry this time, so rebuilding gives the same bytes.
_MTIME = 946684800  # 2000-01-01T00:00:00Z
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}
_NANOSECONDS = 1_000_000_000

_log = get_logger("cloud.oci")


@dataclass(frozen=True)
class OciImage:
    """An OCI image as content-addressed blobs: index, manifest, config and layers."""

    name: str
    index_digest: str
    blobs: dict[str, bytes]

    @property
    def manifest_digest(self) -> str:
        return str(orjson.loads(self.blobs[self.index_digest])["manifests"][0]["digest"])

    @property
    def manifest(self) -> dict[str, Any]:
        return dict(orjson.loads(self.blobs[self.manifest_digest]))

    @property
    def config_digest(self) -> str:
        return str(self.manifest["config"]["digest"])

    @property
    def layer_digests(self) -> list[str]:
        return [str(layer["digest"]) for layer in self.manifest["layers"]]

    @property
    def item_config_digest(self) -> str | None:
        """The digest of the item config the manifest names, None when it names none."""
        return oci.item_config_digest(self.manifest)


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_architecture() -> str:
    """The host's architecture in OCI/Go spelling, so Docker accepts the image without warnings."""
    machine = platform.machine()
    return _ARCHITECTURES.get(machine, machine)


def _entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = link
    info.mtime = _MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _pack(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    """An uncompressed tar of `entries`, sorted by name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in sorted(entries, key=lambda entry: entry[0].name):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _gzip(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buffer.getvalue()


def _rootfs_tar() -> bytes:
    busybox = BUSYBOX.read_bytes()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = [
        (_entry(name, tarfile.DIRTYPE, 0o755), None) for name in ("bin", "etc", "dev", "proc")
    ]
    entries.append((_entry("tmp", tarfile.DIRTYPE, 0o1777), None))
    entries.append((_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(busybox)), busybox))
    entries += [
        (_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"), None)
        for applet in APPLETS
    ]
    return _pack(entries)


def _filler_tar(name: str, size: int) -> bytes:
    data = random.Random(name).randbytes(size)
    return _pack(
        [
            (_entry("data", tarfile.DIRTYPE, 0o755), None),
            (_entry("data/filler.bin", tarfile.REGTYPE, 0o644, size), data),
        ]
    )


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _healthcheck(
    test: list[str], start_period_s: float | None, interval_s: float | None
) -> dict[str, Any]:
    check: dict[str, Any] = {"Test": ["CMD", *test], "Retries": 3}
    if interval_s is not None:
        check["Interval"] = int(interval_s * _NANOSECONDS)
    if start_period_s is not None:
        check["StartPeriod"] = int(start_period_s * _NANOSECONDS)
    return check


def build_test_image(
    name: str,
    *,
    command: list[str] | None = None,
    healthcheck: list[str] | None = None,
    health_start_period_s: float | None = None,
    health_interval_s: float | None = None,
    extra_layer_bytes: int = 0,
    extra_layers: int = 1,
    labels: dict[str, str] | None = None,
    item_config: Mapping[str, Any] | None = None,
) -> OciImage:
    """A busybox image whose digests depend only on the arguments.

    Args:
        name: the image name; also seeds the filler layer.
        command: the `Cmd`; by default a loop that exits at once on SIGTERM, even as PID 1.
        healthcheck: a command for Docker's healthcheck (an extension `docker load` honours).
        health_start_period_s: failures inside this period keep the health "starting".
        health_interval_s: the time between probes (Docker's default is 30 s).
        extra_layer_bytes: when positive, that many pseudo-random bytes in more layers.
        extra_layers: how many layers share `extra_layer_bytes` (a multi-layer item).
        labels: image labels.
        item_config: AosCore's item config as a JSON object (`item_config_json` writes one);
            the manifest names it as `aosItemConfig`, and it is uploaded as a blob.
    """
    layer_tars = [_rootfs_tar()]
    if extra_layer_bytes > 0:
        count = max(1, extra_layers)
        share, rest = divmod(extra_layer_bytes, count)
        layer_tars += [
            _filler_tar(f"{name}-{n}" if n else name, share + (rest if n == 0 else 0))
            for n in range(count)
        ]
    layers = [_gzip(tar) for tar in layer_tars]

    container_config: dict[str, Any] = {
        "Cmd": list(command or DEFAULT_COMMAND),
        "Env": ["PATH=/bin"],
    }
    if labels:
        container_config["Labels"] = dict(labels)
    if healthcheck:
        container_config["Healthcheck"] = _healthcheck(
            healthcheck, health_start_period_s, health_interval_s
        )
    config = _dumps(
        {
            "architecture": host_architecture(),
            "os": "linux",
            "created": "2000-01-01T00:00:00Z",
            "config": container_config,
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar) for tar in layer_tars]},
        }
    )
    manifest_doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": sha256_digest(config),
            "size": len(config),
        },
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": sha256_digest(layer), "size": len(layer)}
            for layer in layers
        ],
    }
    extra: tuple[bytes, ...] = ()
    if item_config is not None:
        item_blob = _dumps(dict(item_config))
        manifest_doc[oci.ITEM_CONFIG_KEY] = {
            "mediaType": ITEM_CONFIG_MEDIA_TYPE,
            "digest": sha256_digest(item_blob),
            "size": len(item_blob),
        }
        extra = (item_blob,)
    manifest = _dumps(manifest_doc)
    index = index_for(manifest, config)
    blobs = {sha256_digest(blob): blob for blob in (index, manifest, config, *extra, *layers)}
    return OciImage(name=name, index_digest=sha256_digest(index), blobs=blobs)


def index_for(manifest: bytes, config: bytes) -> bytes:
    """An OCI image index naming one manifest, with the platform its image config declares.

    The unit is always given an indexDigest and picks its platform's manifest from the index,
    so an image that is a single manifest (what `docker push` makes) is published inside one.
    The manifest keeps its own media type (OCI or Docker v2); an index may name either.

    Raises:
        BlobError: the manifest or config is not a JSON object, or a platform field is not a
            string.
    """
    media_type = oci.load_document(manifest).get("mediaType")
    os_name, architecture, variant = oci.image_platform(config)
    entry: dict[str, Any] = {
        "mediaType": media_type if isinstance(media_type, str) else MANIFEST_MEDIA_TYPE,
        "digest": sha256_digest(manifest),
        "size": len(manifest),
    }
    if os_name and architecture:
        platform_doc = {"architecture": architecture, "os": os_name}
        if variant:
            platform_doc["variant"] = variant
        entry["platform"] = platform_doc
    return _dumps({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [entry]})


def blob_url(registry: str, repository: str, digest: str) -> str:
    """Where the registry serves one blob: the URL the agent downloads from."""
    return f"{registry.rstrip('/')}/v2/{repository}/blobs/{digest}"


def blob_urls(registry: str, entry: Mapping[str, Any], digest: str) -> tuple[str, ...]:
    """A URL into every repository a catalog entry says holds the blob, the latest first.

    Images share blobs (a base layer, the same config), and each repository that holds one
    serves it: the unit tries the next URL when one fails, so the blob stays served while any
    of them holds it. Every document has a blob copy (`push_image`, imports.py), so each URL
    serves its digest, manifests and indexes included.
    """
    held = entry.get("repositories") or [entry["repository"]]
    return tuple(blob_url(registry, str(repository), digest) for repository in held)


def _check(response: httpx.Response, what: str, expected: int) -> httpx.Response:
    if response.status_code != expected:
        raise RemoteError(
            f"registry refused {what}: {response.request.method} {response.request.url} "
            f"answered {response.status_code}: {response.text[:300]}"
        )
    return response


def push_blob(client: httpx.Client, repository: str, digest: str, data: bytes) -> None:
    """Upload `data` as blob `digest` of `repository`, unless the repository already has it.

    Raises:
        RemoteError: the registry refused the upload.
        httpx.HTTPError: the registry could not be reached.
    """
    if client.head(f"/v2/{repository}/blobs/{digest}").status_code == 200:
        return
    started = _check(client.post(f"/v2/{repository}/blobs/uploads/"), f"upload of {digest}", 202)
    location = client.base_url.join(started.headers["Location"])
    upload = client.put(
        location.copy_merge_params({"digest": digest}),
        content=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    _check(upload, f"upload of {digest}", 201)


def put_manifest(
    client: httpx.Client, repository: str, reference: str, body: bytes, media_type: str
) -> None:
    """Register `body` as a manifest (or index) of `repository` under a tag or its digest.

    Raises:
        RemoteError: the registry refused it (a named manifest it does not hold, a bad body).
        httpx.HTTPError: the registry could not be reached.
    """
    headers = {"Content-Type": media_type}
    response = client.put(f"/v2/{repository}/manifests/{reference}", content=body, headers=headers)
    _check(response, f"manifest {repository}:{reference}", 201)


def push_image(
    registry: str, image: OciImage, *, repository: str | None = None, tag: str = "latest"
) -> str:
    """Push every blob of `image`, then its manifest by digest and its index by tag.

    Args:
        registry: base URL, such as ``http://127.0.0.1:5000``.
        image: what `build_test_image` made.
        repository: defaults to the image name.
        tag: the tag the index gets.

    Returns:
        The index digest.

    Raises:
        RemoteError: the registry refused a step or could not be reached.
    """
    repository = repository or image.name
    try:
        with httpx.Client(base_url=registry, timeout=60, trust_env=False) as client:
            for digest, data in image.blobs.items():
                push_blob(client, repository, digest, data)
            manifest = image.blobs[image.manifest_digest]
            put_manifest(client, repository, image.manifest_digest, manifest, MANIFEST_MEDIA_TYPE)
            put_manifest(client, repository, tag, image.blobs[image.index_digest], INDEX_MEDIA_TYPE)
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot push {repository}:{tag} to {registry}: {exc}") from exc
    _log.info(
        "image.pushed",
        registry=registry,
        repository=repository,
        tag=tag,
        index=image.index_digest,
        blobs=len(image.blobs),
    )
    return image.index_digest
