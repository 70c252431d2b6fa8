"""Test images as OCI blobs, pushed to a real docker-registry and read back as the agent does."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import orjson
import pytest

from aoscore_py.cloud.oci import (
    CONFIG_MEDIA_TYPE,
    INDEX_MEDIA_TYPE,
    ITEM_CONFIG_MEDIA_TYPE,
    LAYER_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    OciImage,
    blob_url,
    build_test_image,
    push_image,
)
from aoscore_py.cloud.registry import Registry
from aoscore_py.errors import LocalError

pytestmark = pytest.mark.integration


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class TestBuild:
    def test_same_inputs_give_same_digests(self) -> None:
        def build() -> OciImage:
            return build_test_image(
                "determinism",
                healthcheck=["/bin/true"],
                health_interval_s=0.5,
                extra_layer_bytes=4096,
                labels={"a": "b"},
            )

        first, second = build(), build()
        assert first.index_digest == second.index_digest
        assert first.blobs == second.blobs

    def test_different_inputs_give_different_digests(self) -> None:
        plain = build_test_image("one")
        assert build_test_image("one", labels={"x": "y"}).index_digest != plain.index_digest
        assert build_test_image("one", extra_layer_bytes=10).index_digest != plain.index_digest
        # Same rootfs layer whatever the name: images share it in the engine.
        assert build_test_image("two").layer_digests == plain.layer_digests

    def test_blobs_are_keyed_by_their_digest(self) -> None:
        image = build_test_image("keys", extra_layer_bytes=1000)
        assert all(_digest(data) == digest for digest, data in image.blobs.items())
        expected = {image.index_digest, image.manifest_digest, image.config_digest}
        assert set(image.blobs) == expected | set(image.layer_digests)
        assert len(image.layer_digests) == 2

    def test_documents_follow_the_oci_layout(self) -> None:
        image = build_test_image(
            "layout",
            command=["/bin/sleep", "5"],
            healthcheck=["/bin/false"],
            health_start_period_s=3600,
            health_interval_s=2,
            labels={"role": "test"},
        )
        index = orjson.loads(image.blobs[image.index_digest])
        assert index["mediaType"] == INDEX_MEDIA_TYPE
        assert index["manifests"][0]["mediaType"] == MANIFEST_MEDIA_TYPE
        assert index["manifests"][0]["platform"]["os"] == "linux"
        manifest = image.manifest
        assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
        assert [layer["mediaType"] for layer in manifest["layers"]] == [LAYER_MEDIA_TYPE]
        config = orjson.loads(image.blobs[image.config_digest])
        layer_tar = gzip.decompress(image.blobs[image.layer_digests[0]])
        assert config["rootfs"]["diff_ids"] == [_digest(layer_tar)]
        assert config["config"]["Cmd"] == ["/bin/sleep", "5"]
        assert config["config"]["Labels"] == {"role": "test"}
        assert config["config"]["Healthcheck"] == {
            "Test": ["CMD", "/bin/false"],
            "Interval": 2_000_000_000,
            "StartPeriod": 3_600_000_000_000,
            "Retries": 3,
        }


class TestPush:
    def test_every_blob_is_served_by_digest(self, registry: Registry) -> None:
        image = build_test_image("push-blobs", extra_layer_bytes=200_000)
        assert push_image(registry.url, image, tag="v1") == image.index_digest
        with httpx.Client(trust_env=False) as client:
            for digest, data in image.blobs.items():
                response = client.get(blob_url(registry.url, "push-blobs", digest))
                assert response.status_code == 200, digest
                assert response.content == data
                assert _digest(response.content) == digest

    def test_the_item_config_is_served_and_the_manifest_keeps_naming_it(
        self, registry: Registry
    ) -> None:
        config = {
            "author": "t",
            "quotas": {"ramLimit": 1 << 20},
            "runtimes": [{"codename": "crun"}],
        }
        image = build_test_image("push-item-config", item_config=config)
        push_image(registry.url, image)
        digest = image.item_config_digest
        assert digest is not None
        with httpx.Client(trust_env=False) as client:
            blob = client.get(blob_url(registry.url, "push-item-config", digest))
            assert blob.status_code == 200 and blob.content == image.blobs[digest]
            manifest = client.get(
                f"{registry.url}/v2/push-item-config/manifests/{image.manifest_digest}",
                headers={"Accept": MANIFEST_MEDIA_TYPE},
            )
        assert manifest.status_code == 200
        assert manifest.content == image.blobs[image.manifest_digest], "stored verbatim"
        assert orjson.loads(manifest.content)["aosItemConfig"] == {
            "mediaType": ITEM_CONFIG_MEDIA_TYPE,
            "digest": digest,
            "size": len(image.blobs[digest]),
        }

    def test_push_twice_is_harmless(self, registry: Registry) -> None:
        image = build_test_image("push-twice")
        assert push_image(registry.url, image) == image.index_digest
        assert push_image(registry.url, image, repository="push-twice") == image.index_digest

    def test_tag_resolves_to_the_index(self, registry: Registry) -> None:
        image = build_test_image("push-tag")
        push_image(registry.url, image, repository="team/push-tag", tag="stable")
        response = httpx.get(
            f"{registry.url}/v2/team/push-tag/manifests/stable",
            headers={"Accept": INDEX_MEDIA_TYPE},
            trust_env=False,
        )
        assert response.status_code == 200
        assert response.headers["Docker-Content-Digest"] == image.index_digest
        assert response.content == image.blobs[image.index_digest]

    def test_skopeo_sees_a_real_image(self, registry: Registry) -> None:
        skopeo = shutil.which("skopeo")
        assert skopeo, "skopeo is not installed: apt-get install skopeo"
        image = build_test_image("push-skopeo", extra_layer_bytes=1000)
        push_image(registry.url, image, tag="v2")
        result = subprocess.run(
            [
                skopeo,
                "inspect",
                "--tls-verify=false",
                f"docker://127.0.0.1:{registry.port}/push-skopeo:v2",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        inspected = orjson.loads(result.stdout)
        assert inspected["Digest"] == image.index_digest
        assert inspected["Layers"] == image.layer_digests


class TestRegistryProcess:
    def test_stop_leaves_no_process(self, tmp_path: Path) -> None:
        registry = Registry(tmp_path)
        with registry:
            pid = registry.pid
            assert pid is not None and _pid_alive(pid)
            assert (tmp_path / "registry.pid").read_text().strip() == str(pid)
            assert httpx.get(f"{registry.url}/v2/", trust_env=False).status_code == 200
        assert not _pid_alive(pid)
        assert not (tmp_path / "registry.pid").exists()
        registry.stop()

    def test_busy_port_fails_naming_the_log(self, tmp_path: Path) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            registry = Registry(tmp_path, port=busy.getsockname()[1])
            with pytest.raises(LocalError, match=r"registry\.log"):
                registry.start()
        assert registry.pid is None
        assert not (tmp_path / "registry.pid").exists()
