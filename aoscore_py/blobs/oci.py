"""Reading OCI image indexes and manifests: pure functions over bytes.

An item names its image index; the index names one manifest per platform; the manifest names
a config, layers and, in AosCore's images, an item config (`aosItemConfig`). Docker's manifest
list and v2 manifest media types are accepted too.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import AosCode, BlobError

OCI_INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
"""Docker's image index: what `docker manifest push` and buildx make of a multi-platform image."""
DOCKER_MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
"""Docker's image manifest: what `docker push` makes of an image `docker build` made."""
INDEX_TYPES = {OCI_INDEX_TYPE, DOCKER_LIST_TYPE}
MANIFEST_TYPES = {OCI_MANIFEST_TYPE, DOCKER_MANIFEST_TYPE}
ITEM_CONFIG_KEY = "aosItemConfig"
"""The manifest field that names the item config (aos_core_cpp `imagemanifest.cpp`)."""
ITEM_CONFIG_MEDIA_TYPE = "application/vnd.aos.item.config.v1+json"
"""The item config's media type, as AosCore's launcher test stubs name it."""


def _load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BlobError(f"{what} is not valid JSON: {exc}", code=AosCode.INVALID_ARGUMENT) from None
    if not isinstance(doc, dict):
        raise BlobError(f"{what} is not a JSON object", code=AosCode.INVALID_ARGUMENT)
    return doc


def _digest_of(entry: Any, what: str) -> str:
    if not isinstance(entry, dict) or not isinstance(entry.get("digest"), str):
        raise BlobError(f"{what} has no digest", code=AosCode.INVALID_ARGUMENT)
    return entry["digest"]


def _media_type(doc: dict[str, Any]) -> str | None:
    """The document's mediaType; None when absent or not a string (a list would not hash)."""
    value = doc.get("mediaType")
    return value if isinstance(value, str) else None


def is_index(doc: dict[str, Any]) -> bool:
    return _media_type(doc) in INDEX_TYPES or ("manifests" in doc and "layers" not in doc)


def choose_manifest(index_raw: bytes, os_name: str, arch: str) -> str:
    """The digest of the index's manifest for this platform (the only one if just one).

    Raises:
        BlobError: the index lists no manifest for this platform (notSupported).
    """
    doc = _load(index_raw, "image index")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise BlobError("image index lists no manifests", code=AosCode.INVALID_ARGUMENT)
    if len(manifests) == 1 and not (isinstance(manifests[0], dict) and "platform" in manifests[0]):
        return _digest_of(manifests[0], "image index entry")
    for entry in manifests:
        platform = entry.get("platform") if isinstance(entry, dict) else None
        if (
            isinstance(platform, dict)
            and platform.get("os") == os_name
            and platform.get("architecture") == arch
        ):
            return _digest_of(entry, "image index entry")
    raise BlobError(f"image index has no manifest for {os_name}/{arch}", code=AosCode.NOT_SUPPORTED)


def parse_manifest(raw: bytes) -> tuple[dict[str, Any], str, tuple[str, ...]]:
    """The manifest document, its config digest, and its layer digests in order."""
    doc = _load(raw, "image manifest")
    if _media_type(doc) not in MANIFEST_TYPES and "config" not in doc:
        raise BlobError("image manifest has no config", code=AosCode.INVALID_ARGUMENT)
    config = _digest_of(doc.get("config"), "image manifest config")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise BlobError("image manifest has no layers list", code=AosCode.INVALID_ARGUMENT)
    return doc, config, tuple(_digest_of(layer, "image manifest layer") for layer in layers)


def _get(doc: dict[str, Any], key: str) -> Any:
    """`doc[key]`, else the first key equal to it ignoring case: AosCore reads its OCI
    documents with a case-insensitive wrapper, so `AosItemConfig` names the item config too."""
    if key in doc:
        return doc[key]
    folded = key.lower()
    return next((v for k, v in doc.items() if isinstance(k, str) and k.lower() == folded), None)


def item_config_descriptor(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's item config descriptor, None when it names none (a plain OCI image).

    Raises:
        BlobError: `aosItemConfig` is there but is not a descriptor with a digest
            (invalidArgument).
    """
    entry = _get(manifest, ITEM_CONFIG_KEY)
    if entry is None:
        return None
    _digest_of(entry, f"image manifest {ITEM_CONFIG_KEY}")
    return dict(entry)


def item_config_digest(manifest: dict[str, Any]) -> str | None:
    """The digest of the manifest's item config, None when it names none (a plain OCI image).

    Raises:
        BlobError: `aosItemConfig` is there but is not a descriptor with a digest
            (invalidArgument).
    """
    entry = item_config_descriptor(manifest)
    return None if entry is None else str(entry["digest"])


def image_platform(raw: bytes) -> tuple[str | None, str | None, str | None]:
    """The (os, architecture, variant) an image config declares; None for a missing or empty
    field, as AosCore's launcher skips an empty os or variant when it matches nodes.

    Raises:
        BlobError: the config is not a JSON object, or one of the fields is not a string
            (invalidArgument).
    """
    doc = _load(raw, "image config")
    out: list[str | None] = []
    for key in ("os", "architecture", "variant"):
        value = _get(doc, key)
        if value is not None and not isinstance(value, str):
            raise BlobError(f"image config {key} is not a string", code=AosCode.INVALID_ARGUMENT)
        out.append(value or None)
    return out[0], out[1], out[2]


def load_document(raw: bytes) -> dict[str, Any]:
    """An index or manifest document (to tell which one an item points at)."""
    return _load(raw, "image index")
