"""Publishing existing images: the pure parts. References are checked before skopeo runs,
skopeo's failures keep its message and say whether REF was at fault, a single manifest is
wrapped in an index with its config's platform, and a blob shared by several repositories
gets a URL into each of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from aoscore_py.blobs import oci
from aoscore_py.cli.cloud import cloud
from aoscore_py.cloud.imports import (
    check_reference,
    layout_of,
    skopeo_failure,
    skopeo_message,
    source_is_loopback,
)
from aoscore_py.cloud.oci import blob_urls, index_for, sha256_digest
from aoscore_py.cloud.state import CloudState
from aoscore_py.errors import BlobError, ConfigError, LocalError

MANIFEST = orjson.dumps(
    {
        "schemaVersion": 2,
        "mediaType": oci.DOCKER_MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json"},
        "layers": [],
    }
)


class TestReference:
    @pytest.mark.parametrize(
        "ref",
        [
            "docker-daemon:web:1",
            "oci:/tmp/layout",
            "oci:/tmp/layout:v1",
            "docker-archive:/tmp/web.tar",
            "docker://127.0.0.1:5000/web:1",
        ],
    )
    def test_the_four_transports_pass(self, ref: str) -> None:
        assert check_reference(ref) == ref

    @pytest.mark.parametrize(
        "ref",
        ["web:1", "docker-daemon:", "oci:", "docker://", "dir:/tmp/x", "containers-storage:x"],
    )
    def test_anything_else_is_refused_naming_it(self, ref: str) -> None:
        with pytest.raises(ConfigError, match="docker-daemon:IMAGE") as info:
            check_reference(ref)
        assert repr(ref) in str(info.value)

    @pytest.mark.parametrize(
        ("ref", "loopback"),
        [
            ("docker://127.0.0.1:5000/web:1", True),
            ("docker://localhost:5000/web:1", True),
            ("docker://[::1]:5000/web:1", True),
            ("docker://127.0.0.2/web", True),
            ("docker://registry.example/web:1", False),
            ("docker://10.0.0.1:5000/web:1", False),
            ("docker-daemon:127.0.0.1:5000/web:1", False),
        ],
    )
    def test_only_a_loopback_registry_is_read_without_tls(self, ref: str, loopback: bool) -> None:
        assert source_is_loopback(ref) is loopback

    def test_the_layout_of_an_oci_reference(self) -> None:
        assert layout_of("oci:/tmp/layout:v1") == Path("/tmp/layout")
        assert layout_of("oci:/tmp/layout") == Path("/tmp/layout")
        assert layout_of("docker-archive:/tmp/x.tar") is None


class TestSkopeoFailure:
    STDERR = (
        'time="2026-12-03T16:25:36Z" level=fatal msg="initializing source docker-daemon:nope:1: '
        'loading image from docker engine: Error response from daemon: \\"nope\\" not found"\n'
    )

    def test_the_message_is_skopeos_own(self) -> None:
        assert skopeo_message(self.STDERR) == (
            "initializing source docker-daemon:nope:1: loading image from docker engine: "
            'Error response from daemon: "nope" not found'
        )

    def test_stderr_without_a_log_line_is_kept_whole(self) -> None:
        assert skopeo_message("  something broke\n") == "something broke"
        assert skopeo_message("") == "no message"

    def test_a_source_that_cannot_be_opened_is_bad_input_naming_ref(self) -> None:
        error = skopeo_failure("docker-daemon:nope:1", self.STDERR)
        assert isinstance(error, ConfigError)
        assert "--image docker-daemon:nope:1" in str(error)
        assert '"nope" not found' in str(error)

    def test_a_later_failure_is_a_failure_with_skopeos_message(self) -> None:
        stderr = 'level=fatal msg="writing blob: uploading layer: 500 Internal Server Error"'
        error = skopeo_failure("oci:/tmp/l", stderr)
        assert isinstance(error, LocalError) and not isinstance(error, ConfigError)
        assert "uploading layer: 500" in str(error)


class TestIndexFor:
    def test_a_docker_manifest_keeps_its_media_type_and_gets_its_platform(self) -> None:
        config = orjson.dumps({"os": "linux", "architecture": "arm", "variant": "v7"})
        index = orjson.loads(index_for(MANIFEST, config))
        assert index == {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX_TYPE,
            "manifests": [
                {
                    "mediaType": oci.DOCKER_MANIFEST_TYPE,
                    "digest": sha256_digest(MANIFEST),
                    "size": len(MANIFEST),
                    "platform": {"architecture": "arm", "os": "linux", "variant": "v7"},
                }
            ],
        }

    def test_the_unit_picks_the_wrapped_manifest_for_its_platform(self) -> None:
        index = index_for(MANIFEST, orjson.dumps({"os": "linux", "architecture": "amd64"}))
        assert oci.is_index(oci.load_document(index))
        assert oci.choose_manifest(index, "linux", "amd64") == sha256_digest(MANIFEST)

    def test_a_config_without_platform_gives_an_entry_without_one(self) -> None:
        index = orjson.loads(index_for(MANIFEST, orjson.dumps({"config": {}})))
        assert "platform" not in index["manifests"][0]

    def test_a_manifest_without_media_type_is_named_as_oci(self) -> None:
        bare = orjson.dumps({"schemaVersion": 2, "config": {}, "layers": []})
        index = orjson.loads(index_for(bare, b"{}"))
        assert index["manifests"][0]["mediaType"] == oci.OCI_MANIFEST_TYPE

    def test_the_same_inputs_give_the_same_digest(self) -> None:
        config = orjson.dumps({"os": "linux", "architecture": "amd64"})
        assert index_for(MANIFEST, config) == index_for(MANIFEST, config)

    def test_a_config_that_is_no_object_is_refused(self) -> None:
        with pytest.raises(BlobError):
            index_for(MANIFEST, b"[]")


class TestSharedBlobs:
    def test_every_repository_that_holds_a_blob_gets_a_url_latest_first(
        self, tmp_path: Path
    ) -> None:
        state = CloudState(tmp_path)
        digest = sha256_digest(b"layer")
        for repository in ("alpha", "beta", "alpha"):
            state.add_blobs(repository, {digest: b"layer"})
        entry = state.catalog()[digest]
        assert entry["repository"] == "alpha"
        assert blob_urls("http://r", entry, digest) == (
            f"http://r/v2/alpha/blobs/{digest}",
            f"http://r/v2/beta/blobs/{digest}",
        )

    def test_an_entry_written_before_repositories_were_kept_gives_its_one_url(self) -> None:
        entry: dict[str, Any] = {"repository": "old", "size": 5}
        assert blob_urls("http://r/", entry, "sha256:ab") == ("http://r/v2/old/blobs/sha256:ab",)

    def test_an_old_entry_keeps_its_repository_when_another_publishes_the_blob(
        self, tmp_path: Path
    ) -> None:
        digest = sha256_digest(b"layer")
        (tmp_path / "catalog.json").write_bytes(
            orjson.dumps({digest: {"repository": "old", "size": 5}})
        )
        state = CloudState(tmp_path)
        state.add_blobs("new", {digest: b"layer"})
        assert state.catalog()[digest]["repositories"] == ["new", "old"]


class TestCommandLine:
    def test_builder_options_are_refused_with_image(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(
            cloud,
            ["publish", "web", "--image", "docker-daemon:web:1", "--size", "10"],
            env={"AOSCORE_CLOUD_DIR": str(tmp_path)},
        )
        assert result.exit_code == 2
        assert "--size: not with --image" in result.output

    def test_a_bad_reference_exits_2_naming_it(self, tmp_path: Path) -> None:
        result = CliRunner().invoke(
            cloud,
            ["publish", "web", "--image", "web:1", "--registry", "http://127.0.0.1:1"],
            env={"AOSCORE_CLOUD_DIR": str(tmp_path)},
        )
        assert result.exit_code == 2
        assert "'web:1'" in result.output
