"""Publishing an image that already exists: `aoscore cloud publish NAME --image REF`.

skopeo copies the image, every platform of an index, from the local Docker engine
(`docker-daemon:IMG`), an OCI layout (`oci:DIR[:TAG]`), a docker-archive file
(`docker-archive:FILE`) or a registry (`docker://HOST/NAME:TAG`) into the cloud's registry as
`NAME:latest`, keeping its manifests (Docker v2 or OCI) and configs as they are: entrypoint, cmd,
env, workdir, user and healthcheck travel in the config, so a unit runs the image as `docker
run` would. Then this module makes what the unit needs that a registry push does not give:

- an image index, when the source is a single manifest: the unit is given an indexDigest, so an
  OCI index naming the manifest (platform from its config) is made and tagged `NAME:latest`;
- a blob copy of every document (index, manifests): the unit downloads everything from
  `/v2/<repo>/blobs/<digest>`, which a registry serves only for what was uploaded as a blob,
  never for a document pushed as a manifest. A blob copy serves the same bytes with HTTP Range
  and no Accept header, which `/manifests/<digest>` would need (and a registry may convert a
  manifest there for an old Accept header);
- the catalog entries (size, sha384, sha512) the cloud signs with, after checking that every
  URL it will hand out really serves its digest.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from ..blobs import oci as blobs_oci
from ..errors import ConfigError, LocalError, RemoteError
from ..logs import get_logger
from .oci import index_for, push_blob, put_manifest, sha256_digest
from .service import registry_of
from .state import CloudState

TRANSPORTS = ("docker-daemon:", "oci:", "docker-archive:", "docker://")
TAG = "latest"
ACCEPT = ", ".join(sorted(blobs_oci.INDEX_TYPES | blobs_oci.MANIFEST_TYPES))
# skopeo prints `time=... level=fatal msg="..."`; the message is what the operator needs.
_FATAL = re.compile(r'level=fatal msg="((?:[^"\\]|\\.)*)"')

_log = get_logger("cloud.imports")


@dataclass(frozen=True)
class ImportedImage:
    """What `import_image` published: the index the unit is given, and what it names.

    Attributes:
        name: the repository in the cloud's registry.
        index_digest: the image index (the item's indexDigest).
        manifests: each platform's manifest digest, in index order.
        blobs: every digest the catalog now serves for this image, with its size.
        wrapped: True when the source was a single manifest and the index was made here.
    """

    name: str
    index_digest: str
    manifests: tuple[str, ...]
    blobs: dict[str, int]
    wrapped: bool


def check_reference(ref: str) -> str:
    """`ref` when it names a transport skopeo reads and something after it.

    Raises:
        ConfigError: another transport, or nothing after it (exit 2, naming REF).
    """
    for transport in TRANSPORTS:
        if ref.startswith(transport) and ref[len(transport) :].strip("/:"):
            return ref
    raise ConfigError(
        f"--image {ref!r}: use docker-daemon:IMAGE, oci:DIR[:TAG], docker-archive:FILE "
        "or docker://HOST/NAME:TAG"
    )


def source_is_loopback(ref: str) -> bool:
    """Whether a `docker://` reference names a registry on loopback (served over plain HTTP,
    as test registries are), so skopeo must not insist on TLS for it."""
    if not ref.startswith("docker://"):
        return False
    host = urlsplit("//" + ref.removeprefix("docker://").split("/", 1)[0]).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def skopeo_message(stderr: str) -> str:
    """skopeo's own error message out of its log line (all of stderr when there is none)."""
    found = _FATAL.findall(stderr)
    if found:
        return str(orjson.loads(f'"{found[-1]}"'))
    return stderr.strip() or "no message"


def skopeo_failure(ref: str, stderr: str) -> Exception:
    """The error for a failed `skopeo copy` from `ref`: a source that cannot be opened is the
    operator's input (ConfigError, exit 2, naming REF), anything later is a failure (exit 1);
    both carry skopeo's message."""
    message = skopeo_message(stderr)
    if "initializing source" in message:
        return ConfigError(f"--image {ref}: cannot read the image: {message}")
    return LocalError(f"skopeo copy of {ref} failed: {message}")


def find_skopeo() -> str:
    """The path of `skopeo`.

    Raises:
        LocalError: it is not installed.
    """
    path = shutil.which("skopeo")
    if path is None:
        raise LocalError("skopeo not found on PATH: install the Debian package `skopeo`")
    return path


def skopeo_copy(ref: str, registry: str, name: str) -> str:
    """Copy `ref`, every platform, to `registry` as `name:latest`; the digest it pushed (the
    index's for a list, else the manifest's).

    Raises:
        ConfigError: the source cannot be opened (missing image, file or tag, bad reference).
        LocalError: skopeo is missing or failed later (its message is in the error).
    """
    host = urlsplit(registry).netloc
    with tempfile.TemporaryDirectory(prefix="aoscore-import-") as scratch:
        digest_file = Path(scratch) / "digest"
        args = [
            find_skopeo(),
            "copy",
            "--quiet",
            "--all",
            "--dest-tls-verify=false",  # the cloud's registry is plain HTTP on loopback
            "--digestfile",
            str(digest_file),
        ]
        if source_is_loopback(ref):
            args.append("--src-tls-verify=false")
        args += [ref, f"docker://{host}/{name}:{TAG}"]
        done = subprocess.run(
            args, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise skopeo_failure(ref, done.stderr)
        return digest_file.read_text().strip()


def _fetch(client: httpx.Client, path: str, digest: str, headers: dict[str, str]) -> bytes:
    """The bytes the registry serves at `path`, checked against `digest`.

    Raises:
        RemoteError: the registry does not serve it, or serves other bytes.
    """
    response = client.get(path, headers=headers)
    if response.status_code != 200:
        raise RemoteError(
            f"registry does not serve {path}: {response.status_code} {response.text[:200]}"
        )
    data = response.content
    if sha256_digest(data) != digest:
        raise RemoteError(f"registry served other bytes for {path}")
    return data


def _descriptors(manifest: dict[str, Any]) -> Iterator[tuple[str, int]]:
    """(digest, size) of the config, layers and item config a manifest names."""
    named = [manifest.get("config"), *manifest.get("layers", [])]
    item_config = blobs_oci.item_config_descriptor(manifest)
    if item_config is not None:
        named.append(item_config)
    for entry in named:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            yield entry["digest"], int(entry.get("size", -1))


def layout_of(ref: str) -> Path | None:
    """The folder of an `oci:DIR[:TAG]` reference (skopeo splits at the first colon)."""
    if not ref.startswith("oci:"):
        return None
    return Path(ref.removeprefix("oci:").split(":", 1)[0])


def _push_item_configs(
    client: httpx.Client, name: str, manifests: Sequence[dict[str, Any]], layout: Path | None
) -> None:
    """Upload the item configs the manifests name from the source's OCI layout: skopeo copies
    a manifest's config and layers, not the `aosItemConfig` AosCore's images add."""
    for manifest in manifests:
        entry = blobs_oci.item_config_descriptor(manifest)
        if entry is None or layout is None:
            continue
        digest = str(entry["digest"])
        if client.head(f"/v2/{name}/blobs/{digest}").status_code == 200:
            continue
        algorithm, _, hex_digest = digest.partition(":")
        try:
            data = (layout / "blobs" / algorithm / hex_digest).read_bytes()
        except OSError as exc:
            raise ConfigError(f"item config {digest} is not in the layout {layout}: {exc}") from exc
        if sha256_digest(data) != digest:
            raise ConfigError(f"item config {digest} in the layout {layout} has other bytes")
        push_blob(client, name, digest, data)


def _check_served(client: httpx.Client, name: str, digest: str, size: int) -> None:
    """Raise unless `/v2/<name>/blobs/<digest>` answers 200 with that digest and size: every
    URL the cloud hands out must really serve its digest."""
    response = client.head(f"/v2/{name}/blobs/{digest}")
    served = response.headers.get("Docker-Content-Digest")
    length = int(response.headers.get("Content-Length", -1))
    if response.status_code != 200 or served not in (None, digest) or length != size:
        raise RemoteError(
            f"registry does not serve blob {digest} of {name}: {response.status_code}, "
            f"digest {served}, {length} bytes (expected {size})"
        )


def _catalog(client: httpx.Client, state: CloudState, name: str, blobs: dict[str, int]) -> None:
    """Add every blob to the catalog, one at a time, so no more than one layer is in memory."""
    for digest in blobs:
        state.add_blobs(name, {digest: _fetch(client, f"/v2/{name}/blobs/{digest}", digest, {})})


@dataclass(frozen=True)
class _Documents:
    """The index and manifests of a pushed image, as bytes, and which digest is which."""

    index_digest: str
    manifest_digests: list[str]
    raw: dict[str, bytes]
    wrapped: bool


def _documents(client: httpx.Client, name: str, top: str) -> _Documents:
    """Read what skopeo pushed as `top` back from the registry; a single manifest comes back
    wrapped in an index made here (not pushed yet).

    Raises:
        RemoteError: the registry does not serve a document, or serves other bytes.
        BlobError: a document is no JSON object, or a manifest names no config.
    """
    accept = {"Accept": ACCEPT}
    raw = _fetch(client, f"/v2/{name}/manifests/{top}", top, accept)
    doc = blobs_oci.load_document(raw)
    if blobs_oci.is_index(doc):
        digests = [str(entry["digest"]) for entry in doc.get("manifests", [])]
        found = {top: raw}
        for digest in digests:
            found[digest] = _fetch(client, f"/v2/{name}/manifests/{digest}", digest, accept)
        return _Documents(top, digests, found, wrapped=False)
    _, config_digest, _ = blobs_oci.parse_manifest(raw)
    config = _fetch(client, f"/v2/{name}/blobs/{config_digest}", config_digest, {})
    index = index_for(raw, config)
    return _Documents(sha256_digest(index), [top], {top: raw, sha256_digest(index): index}, True)


def publish_blobs(
    registry: str, name: str, top: str, state: CloudState, *, layout: Path | None = None
) -> ImportedImage:
    """Make what skopeo pushed as `top` servable to units, then catalog it.

    A single manifest gets an index (tagged `latest` in its place); every document gets a blob
    copy; every blob is checked to be served at its URL before any enters the catalog.

    Args:
        layout: the source's OCI layout, where item configs skopeo does not copy are read.

    Raises:
        ConfigError: an item config a manifest names is not in the source layout.
        RemoteError: the registry refused a step or does not serve a blob; the pushed image is
            no index or manifest this cloud can serve.
    """
    with httpx.Client(base_url=registry, timeout=60, trust_env=False) as client:
        documents = _documents(client, name, top)
        manifests = [
            blobs_oci.parse_manifest(documents.raw[d])[0] for d in documents.manifest_digests
        ]
        _push_item_configs(client, name, manifests, layout)
        blobs: dict[str, int] = {}
        for manifest in manifests:
            blobs.update(_descriptors(manifest))
        for digest, data in documents.raw.items():
            push_blob(client, name, digest, data)
            blobs[digest] = len(data)
        if documents.wrapped:
            index = documents.raw[documents.index_digest]
            put_manifest(client, name, TAG, index, blobs_oci.OCI_INDEX_TYPE)
        for digest, size in blobs.items():
            _check_served(client, name, digest, size)
        _catalog(client, state, name, blobs)
    return ImportedImage(
        name, documents.index_digest, tuple(documents.manifest_digests), blobs, documents.wrapped
    )


def import_image(
    cloud_dir: Path, name: str, ref: str, *, registry_url: str | None = None
) -> ImportedImage:
    """Publish the existing image `ref` as item image `name`; see the module docstring.

    Args:
        cloud_dir: the cloud's folder (its catalog, and its registry unless `registry_url`).
        name: the repository in the cloud's registry.
        ref: `docker-daemon:IMG`, `oci:DIR[:TAG]`, `docker-archive:FILE` or
            `docker://HOST/NAME:TAG` (a loopback host is read over plain HTTP).
        registry_url: the registry to publish to, instead of the running cloud's.

    Raises:
        ConfigError: a bad reference, a source skopeo cannot open, or no registry to use.
        LocalError: skopeo is missing or failed (with its message).
        RemoteError: the registry refused a step or does not serve a blob.
    """
    check_reference(ref)
    registry = registry_of(cloud_dir, registry_url)
    top = skopeo_copy(ref, registry, name)
    try:
        image = publish_blobs(registry, name, top, CloudState(cloud_dir), layout=layout_of(ref))
    except httpx.HTTPError as exc:
        raise RemoteError(f"cannot publish {name} to {registry}: {exc}") from exc
    _log.info(
        "image.imported",
        name=name,
        source=ref,
        index_digest=image.index_digest,
        manifests=len(image.manifests),
        blobs=len(image.blobs),
        wrapped=image.wrapped,
        registry=registry,
    )
    return image
