"""Images on a node's engine: loading verified OCI blobs, and choosing which ones to collect.

Loading (`ensure_image`): an image whose id is the manifest's config digest is already there. Else
the config's os and architecture are checked against the node's first, so an image built for
another CPU fails its instance with notSupported instead of crash-looping on "exec format error";
then the blobs are packed as a docker-archive (manifest.json, the config, one tar per layer, zstd
layers decompressed: layers.py) and loaded. Collection (`collectable`) is a pure choice: only
images this agent tagged, none that a wanted instance or any container uses.
"""

from __future__ import annotations

import io
import platform
import tarfile
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from ..errors import AosCode, RemoteError, RuntimeEngineError
from ..logs import get_logger
from . import layers
from .types import ImageInfo, Platform

_log = get_logger("sm.images")

# uname's and Go's spellings -> OCI's.
_ARCHITECTURES = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv8l": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
}


class ImageEngine(Protocol):
    """What loading needs from the engine (DockerRuntime provides it)."""

    def image_platform(self, image: str) -> Platform | None: ...

    def load_archive(self, archive: IO[bytes]) -> list[str]: ...

    def tag_image(self, image: str, tag: str) -> None: ...


def normalize(os_name: str, architecture: str, variant: str = "") -> Platform:
    """A platform in OCI spelling, whichever spelling it came in (`Linux`, `x86_64`, `armv7l`)."""
    arch, implied = _ARCHITECTURES.get(architecture.lower(), (architecture.lower(), ""))
    variant = (variant or implied).lower()
    if arch == "arm64" and variant == "v8":
        variant = ""  # arm64's only common variant: saying it or not is the same platform
    return Platform(os_name.lower(), arch, variant)


def host_platform() -> Platform:
    """This machine's platform (for an engine on this host)."""
    return normalize(platform.system(), platform.machine())


def check_platform(image: Platform, node: Platform) -> None:
    """Raise unless an image of platform `image` runs on `node`.

    The os and architecture must be equal. A variant is compared only when both name one: an arm
    image of variant vN runs on an arm node of variant vM when N <= M.

    Raises:
        RemoteError: notSupported, naming both platforms.
    """
    ok = image.os == node.os and image.architecture == node.architecture
    if ok and image.variant and node.variant and image.variant != node.variant:
        ok = image.architecture == "arm" and _arm_level(image.variant) <= _arm_level(node.variant)
    if not ok:
        raise RemoteError(
            f"the image is built for {image}, this node runs {node}", code=AosCode.NOT_SUPPORTED
        )


def _arm_level(variant: str) -> int:
    try:
        return int(variant.removeprefix("v"))
    except ValueError:
        return 1 << 30


def config_platform(config: Mapping[str, Any]) -> Platform | None:
    """The platform an OCI image config names; None when it names no os or architecture."""
    os_name, arch = config.get("os"), config.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    variant = config.get("variant")
    return normalize(os_name, arch, variant if isinstance(variant, str) else "")


def ensure_image(
    engine: ImageEngine,
    config_digest: str,
    manifest: Mapping[str, Any],
    blob_path: Callable[[str], Path],
    *,
    tag: str | None = None,
    node: Platform | None = None,
) -> str:
    """Load the image of `manifest` unless the engine has it; return its image id.

    Docker's id for a loaded archive is the digest of its config, so an image whose id is
    `config_digest` is already this image and needs no load.

    Args:
        engine: the Docker adapter.
        config_digest: the manifest's config digest, the expected image id.
        manifest: the verified OCI image manifest.
        blob_path: where the verified blob of a digest lies.
        tag: a repository tag for the loaded image.
        node: the node's platform; None skips the platform check.

    Raises:
        RemoteError: notSupported for another platform or an unsupported layer; invalidArgument
            for a manifest that names another config or a config that is no JSON object.
        RuntimeEngineError: a blob is unreadable, the engine refused the archive, or the loaded
            image has another id.
    """
    present = engine.image_platform(config_digest)
    if present is not None:
        if node is not None:
            check_platform(present, node)
        if tag is not None:
            engine.tag_image(config_digest, tag)  # ours too: another SM's tag may go
        return config_digest
    if manifest.get("config", {}).get("digest") != config_digest:
        raise RemoteError(
            f"load image {config_digest}: the manifest names another config",
            code=AosCode.INVALID_ARGUMENT,
        )
    config = _read_config(config_digest, blob_path)
    wanted = config_platform(config)
    if node is not None and wanted is not None:
        check_platform(wanted, node)
    with tempfile.TemporaryDirectory(prefix="aoscore-load-") as scratch:
        archive_path = Path(scratch) / "image.tar"
        try:
            with open(archive_path, "wb") as archive:
                write_archive(archive, config_digest, manifest, blob_path, tag, Path(scratch))
        except OSError as exc:
            raise RuntimeEngineError(f"assemble image archive for {config_digest}: {exc}") from exc
        with open(archive_path, "rb") as archive:
            ids = engine.load_archive(archive)
    if ids != [config_digest]:
        raise RuntimeEngineError(f"load image {config_digest}: the engine loaded {ids}")
    _log.info("image.loaded", image=config_digest, tag=tag, layers=len(manifest["layers"]))
    return config_digest


def _read_config(config_digest: str, blob_path: Callable[[str], Path]) -> dict[str, Any]:
    try:
        data = blob_path(config_digest).read_bytes()
    except OSError as exc:
        raise RuntimeEngineError(f"read image config {config_digest}: {exc}") from exc
    try:
        config = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RemoteError(
            f"image config {config_digest} is not JSON: {exc}", code=AosCode.INVALID_ARGUMENT
        ) from exc
    if not isinstance(config, dict):
        raise RemoteError(
            f"image config {config_digest} is not a JSON object", code=AosCode.INVALID_ARGUMENT
        )
    return config


def write_archive(
    archive: IO[bytes],
    config_digest: str,
    manifest: Mapping[str, Any],
    blob_path: Callable[[str], Path],
    tag: str | None,
    scratch: Path,
) -> None:
    """A docker-archive for `docker load`: manifest.json, the config and the layer tars.

    Plain and gzip layers go in as they are; zstd ones are decompressed into `scratch` first
    (a tar member needs its size up front).

    Raises:
        RemoteError: notSupported for a layer Docker cannot read and we cannot convert;
            invalidChecksum for a zstd layer that does not decompress.
        OSError: a blob cannot be read, or the archive or scratch file written.
    """
    config_name = config_digest.removeprefix("sha256:") + ".json"
    plans = []
    for layer in manifest["layers"]:
        path = blob_path(layer["digest"])
        plans.append(
            (layer, path, layers.compression(layer.get("mediaType"), layers.read_head(path)))
        )
    layer_names: list[str] = []
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.add(blob_path(config_digest), arcname=config_name)
        for layer, path, kind in plans:
            hex_digest = str(layer["digest"]).split(":", 1)[-1]
            if kind == layers.ZSTD:
                plain = scratch / f"{hex_digest}.tar"
                with open(plain, "wb") as out:
                    layers.decompress_zstd(path, out)
                name = f"{hex_digest}.tar"
                tar.add(plain, arcname=name)
                plain.unlink()
            else:
                name = hex_digest + (".tar.gz" if kind == layers.GZIP else ".tar")
                tar.add(path, arcname=name)
            layer_names.append(name)
        index = orjson.dumps(
            [{"Config": config_name, "RepoTags": [tag] if tag else [], "Layers": layer_names}]
        )
        info = tarfile.TarInfo("manifest.json")
        info.size = len(index)
        tar.addfile(info, fileobj=io.BytesIO(index))


def collectable(
    images: Iterable[ImageInfo], owner: str, keep: Collection[str], in_use: Collection[str]
) -> list[ImageInfo]:
    """The images whose tags SM `owner` may remove: tagged by it, neither kept nor used by a
    container. Removing its tags deletes an image only when no other tag is left.

    Args:
        images: what the engine holds.
        owner: the SM (`types.image_owner`).
        keep: config digests (image ids) that a wanted instance uses.
        in_use: image ids any container on the engine was created from, ours or not.
    """
    return sorted(
        (i for i in images if i.tags_of(owner) and i.id not in keep and i.id not in in_use),
        key=lambda i: i.id,
    )
