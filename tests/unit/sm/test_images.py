"""Loading images from blobs without an engine: layer compressions (zstd decompressed), the
platform check before loading, the archive's shape, and which images collection may remove."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import zstandard

from aoscore_py.errors import AosCode, RemoteError, RuntimeEngineError
from aoscore_py.sm import layers
from aoscore_py.sm.images import (
    check_platform,
    collectable,
    config_platform,
    ensure_image,
    normalize,
)
from aoscore_py.sm.types import ImageInfo, Platform, image_owner, image_tag

from .stubs import FakeClock, FakeEngine, digest_of, make_blobs

AMD64 = Platform("linux", "amd64")

OCI = "application/vnd.oci.image.layer.v1.tar"
DOCKER = "application/vnd.docker.image.rootfs.diff.tar"


class TestCompression:
    @pytest.mark.parametrize(
        ("media_type", "head", "kind"),
        [
            (OCI, b"", layers.PLAIN),
            (OCI + "+gzip", b"\x1f\x8b", layers.GZIP),
            (OCI + "+zstd", layers.ZSTD_MAGIC, layers.ZSTD),
            (DOCKER + ".gzip", b"\x1f\x8b", layers.GZIP),
            ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", b"", layers.ZSTD),
            ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", b"", layers.GZIP),
            (OCI + "+gzip", layers.ZSTD_MAGIC, layers.ZSTD),  # the bytes win
            (None, layers.ZSTD_MAGIC, layers.ZSTD),
            (None, b"\x1f\x8b", layers.GZIP),
            (None, b"bin/", layers.PLAIN),
        ],
    )
    def test_kinds(self, media_type: str | None, head: bytes, kind: str) -> None:
        assert layers.compression(media_type, head) == kind

    @pytest.mark.parametrize(
        "media_type",
        [OCI + "+gzip+encrypted", OCI + "+bzip2", "application/vnd.oci.image.config.v1+json"],
    )
    def test_unsupported_layers_are_refused(self, media_type: str) -> None:
        with pytest.raises(RemoteError) as raised:
            layers.compression(media_type, b"\x00\x00\x00\x00")
        assert raised.value.code == AosCode.NOT_SUPPORTED

    def test_zstd_is_decompressed_in_a_stream(self, tmp_path: Path) -> None:
        data = bytes(range(256)) * 20_000
        source = tmp_path / "layer"
        with open(source, "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as w:
            w.write(data)  # a streamed frame names no content size
        out = io.BytesIO()
        assert layers.decompress_zstd(source, out) == len(data)
        assert out.getvalue() == data

    def test_a_broken_zstd_layer_is_an_invalid_checksum(self, tmp_path: Path) -> None:
        source = tmp_path / "layer"
        source.write_bytes(layers.ZSTD_MAGIC + b"not really zstd")
        with pytest.raises(RemoteError) as raised:
            layers.decompress_zstd(source, io.BytesIO())
        assert raised.value.code == AosCode.INVALID_CHECKSUM


class TestPlatform:
    @pytest.mark.parametrize(
        ("given", "platform"),
        [
            (("Linux", "x86_64"), Platform("linux", "amd64")),
            (("linux", "aarch64"), Platform("linux", "arm64")),
            (("linux", "arm64", "v8"), Platform("linux", "arm64")),
            (("linux", "armv7l"), Platform("linux", "arm", "v7")),
            (("linux", "arm", "v6"), Platform("linux", "arm", "v6")),
            (("windows", "amd64"), Platform("windows", "amd64")),
        ],
    )
    def test_spellings(self, given: tuple[str, ...], platform: Platform) -> None:
        assert normalize(*given) == platform

    @pytest.mark.parametrize(
        ("image", "node"),
        [
            (AMD64, AMD64),
            (Platform("linux", "arm", "v6"), Platform("linux", "arm", "v7")),
            (Platform("linux", "arm"), Platform("linux", "arm", "v7")),
        ],
    )
    def test_runs(self, image: Platform, node: Platform) -> None:
        check_platform(image, node)

    @pytest.mark.parametrize(
        ("image", "node"),
        [
            (Platform("linux", "arm64"), AMD64),
            (Platform("windows", "amd64"), AMD64),
            (Platform("linux", "arm", "v7"), Platform("linux", "arm", "v6")),
            (Platform("linux", "386"), AMD64),
        ],
    )
    def test_does_not_run(self, image: Platform, node: Platform) -> None:
        with pytest.raises(RemoteError, match=f"built for {image}, this node runs {node}") as r:
            check_platform(image, node)
        assert r.value.code == AosCode.NOT_SUPPORTED

    def test_a_config_without_a_platform_names_none(self) -> None:
        assert config_platform({}) is None
        assert config_platform({"os": "linux", "architecture": ""}) is None
        assert config_platform({"os": "linux", "architecture": "arm", "variant": "v7"}) == (
            Platform("linux", "arm", "v7")
        )


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine(FakeClock())


class TestEnsureImage:
    def test_zstd_layers_go_into_the_archive_decompressed(
        self, engine: FakeEngine, tmp_path: Path
    ) -> None:
        blobs = make_blobs(tmp_path, compressions=("gzip", "zstd", "tar"))
        tag = image_tag("u-n1", "svc", "1.0")
        got = ensure_image(
            engine, blobs.config_digest, blobs.manifest, blobs.path, tag=tag, node=AMD64
        )
        assert got == blobs.config_digest
        (archive,) = engine.loads
        gz, zst, plain = (layer["digest"].split(":")[1] for layer in blobs.manifest["layers"])
        assert set(archive) == {
            "manifest.json",
            blobs.config_digest.split(":")[1] + ".json",
            f"{gz}.tar.gz",
            f"{zst}.tar",
            f"{plain}.tar",
        }
        assert archive[f"{zst}.tar"] == blobs.plain_layers[1]
        assert digest_of(archive[f"{zst}.tar"]) == digest_of(blobs.plain_layers[1])
        assert engine.images[got][1] == ["aoscore/u-n1/svc:1.0"]

    def test_a_present_image_is_not_loaded_again(self, engine: FakeEngine, tmp_path: Path) -> None:
        blobs = make_blobs(tmp_path)
        engine.add_image(blobs.config_digest)
        assert ensure_image(engine, blobs.config_digest, blobs.manifest, blobs.path) == (
            blobs.config_digest
        )
        assert engine.loads == []

    def test_another_platform_is_refused_before_loading(
        self, engine: FakeEngine, tmp_path: Path
    ) -> None:
        blobs = make_blobs(tmp_path, architecture="arm64")
        with pytest.raises(RemoteError) as raised:
            ensure_image(engine, blobs.config_digest, blobs.manifest, blobs.path, node=AMD64)
        assert raised.value.code == AosCode.NOT_SUPPORTED
        assert "linux/arm64" in raised.value.message and "linux/amd64" in raised.value.message
        assert engine.loads == []

    def test_a_present_image_of_another_platform_is_refused_too(
        self, engine: FakeEngine, tmp_path: Path
    ) -> None:
        blobs = make_blobs(tmp_path)
        engine.add_image(blobs.config_digest, platform=Platform("linux", "arm64"))
        with pytest.raises(RemoteError, match="linux/arm64"):
            ensure_image(engine, blobs.config_digest, blobs.manifest, blobs.path, node=AMD64)

    def test_an_encrypted_layer_is_refused_before_loading(
        self, engine: FakeEngine, tmp_path: Path
    ) -> None:
        blobs = make_blobs(tmp_path, media_types=(OCI + "+gzip+encrypted",))
        with pytest.raises(RemoteError) as raised:
            ensure_image(engine, blobs.config_digest, blobs.manifest, blobs.path, node=AMD64)
        assert raised.value.code == AosCode.NOT_SUPPORTED and engine.loads == []

    def test_a_manifest_naming_another_config_is_refused(
        self, engine: FakeEngine, tmp_path: Path
    ) -> None:
        blobs = make_blobs(tmp_path)
        with pytest.raises(RemoteError, match="another config"):
            ensure_image(engine, "sha256:" + "0" * 64, blobs.manifest, blobs.path)

    def test_a_missing_blob_names_the_image(self, engine: FakeEngine, tmp_path: Path) -> None:
        blobs = make_blobs(tmp_path)
        blobs.path(blobs.config_digest).unlink()
        with pytest.raises(RuntimeEngineError, match=blobs.config_digest):
            ensure_image(engine, blobs.config_digest, blobs.manifest, blobs.path)

    def test_a_config_that_is_no_json_object_is_invalid(
        self, engine: FakeEngine, tmp_path: Path
    ) -> None:
        blobs = make_blobs(tmp_path)
        blobs.path(blobs.config_digest).write_bytes(b"[1, 2]")
        with pytest.raises(RemoteError) as raised:
            ensure_image(engine, blobs.config_digest, blobs.manifest, blobs.path)
        assert raised.value.code == AosCode.INVALID_ARGUMENT


class TestCollectable:
    def test_only_this_sms_images_that_nothing_needs(self) -> None:
        found = [
            ImageInfo("sha256:a", ("aoscore/u-n1/svc:1.0",)),
            ImageInfo("sha256:b", ("aoscore/u-n1/svc:2.0",)),
            ImageInfo("sha256:c", ("aoscore/u-n1/svc:3.0", "aoscore/u-n2/svc:3.0")),
            ImageInfo("sha256:d", ("busybox:latest",)),
            ImageInfo("sha256:e", ("aoscore/u-n2/svc:1.0",)),
            ImageInfo("sha256:f", ()),
            ImageInfo("sha256:g", ("aoscore/u-n1/used:1",)),
            ImageInfo("sha256:h", ("aoscore/svc:1.0", "aoscore_legacy:1.0")),
        ]
        out = collectable(found, "u-n1", keep={"sha256:b"}, in_use={"sha256:g"})
        assert [(i.id, i.tags_of("u-n1")) for i in out] == [
            ("sha256:a", ("aoscore/u-n1/svc:1.0",)),
            ("sha256:c", ("aoscore/u-n1/svc:3.0",)),  # its u-n2 tag keeps it on the engine
        ]

    def test_image_tags_are_valid_docker_references(self) -> None:
        owner = image_owner("Unit_1", "Node.2")
        assert owner == "unit-1-node-2"
        assert image_tag(owner, "Svc/One", "1.0.0+build.5") == (
            "aoscore/unit-1-node-2/svc-one:1.0.0_build.5"
        )
        assert image_tag(owner, "___", "") == "aoscore/unit-1-node-2/item:latest"
        assert image_tag(owner, "a", "-x" * 100).split(":")[1] == ("x-" * 64)[:128]
