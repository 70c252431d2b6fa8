"""oci: reading image indexes and manifests, and refusing what cannot be read."""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aoscore_py.blobs import oci
from aoscore_py.errors import AosCode, BlobError

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
D = {
    name: f"sha256:{n:064x}" for n, name in enumerate(["amd64", "arm64", "cfg", "l1", "l2", "item"])
}


def raw(doc: Any) -> bytes:
    return orjson.dumps(doc)


def entry(digest: str, os_name: str | None = None, arch: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": MANIFEST, "digest": digest, "size": 100}
    if os_name is not None:
        out["platform"] = {"os": os_name, "architecture": arch}
    return out


def index(*entries: dict[str, Any]) -> bytes:
    return raw({"schemaVersion": 2, "mediaType": INDEX, "manifests": list(entries)})


def refused(fn, *args) -> BlobError:
    with pytest.raises(BlobError) as info:
        fn(*args)
    return info.value


class TestChooseManifest:
    def test_picks_the_entry_for_this_platform(self) -> None:
        doc = index(entry(D["arm64"], "linux", "arm64"), entry(D["amd64"], "linux", "amd64"))
        assert oci.choose_manifest(doc, "linux", "amd64") == D["amd64"]
        assert oci.choose_manifest(doc, "linux", "arm64") == D["arm64"]

    def test_os_must_match_too(self) -> None:
        doc = index(entry(D["arm64"], "windows", "amd64"), entry(D["amd64"], "linux", "amd64"))
        assert oci.choose_manifest(doc, "linux", "amd64") == D["amd64"]

    def test_a_single_entry_without_platform_is_taken(self) -> None:
        assert oci.choose_manifest(index(entry(D["amd64"])), "linux", "riscv64") == D["amd64"]

    def test_a_single_entry_for_another_platform_is_not_supported(self) -> None:
        err = refused(
            oci.choose_manifest, index(entry(D["arm64"], "linux", "arm64")), "linux", "amd64"
        )
        assert err.code == AosCode.NOT_SUPPORTED
        assert "linux/amd64" in err.message

    def test_no_entry_for_this_platform_is_not_supported(self) -> None:
        doc = index(entry(D["arm64"], "linux", "arm64"), entry(D["l1"], "linux", "s390x"))
        err = refused(oci.choose_manifest, doc, "linux", "amd64")
        assert err.code == AosCode.NOT_SUPPORTED
        assert "linux/amd64" in err.message

    @pytest.mark.parametrize(
        "doc",
        [
            {"manifests": []},
            {"schemaVersion": 2},
            {"manifests": {"digest": "x"}},
        ],
    )
    def test_an_index_without_manifests_is_refused(self, doc: dict[str, Any]) -> None:
        err = refused(oci.choose_manifest, raw(doc), "linux", "amd64")
        assert err.code == AosCode.INVALID_ARGUMENT
        assert "no manifests" in err.message

    @pytest.mark.parametrize("bad", [5, None, "platform", [], {"size": 3}, {"digest": 7}])
    def test_a_single_unreadable_entry_is_refused_as_bad_input(self, bad: Any) -> None:
        err = refused(oci.choose_manifest, raw({"manifests": [bad]}), "linux", "amd64")
        assert err.code == AosCode.INVALID_ARGUMENT
        assert "digest" in err.message

    def test_the_matching_entry_must_name_a_digest(self) -> None:
        doc = raw({"manifests": [{"platform": {"os": "linux", "architecture": "amd64"}}, 5]})
        err = refused(oci.choose_manifest, doc, "linux", "amd64")
        assert err.code == AosCode.INVALID_ARGUMENT

    @pytest.mark.parametrize("text", [b"", b"{", b"not json", b"\xff"])
    def test_not_json(self, text: bytes) -> None:
        err = refused(oci.choose_manifest, text, "linux", "amd64")
        assert err.code == AosCode.INVALID_ARGUMENT
        assert "image index is not valid JSON" in err.message

    @pytest.mark.parametrize("doc", [[], "index", 3, None])
    def test_not_an_object(self, doc: Any) -> None:
        err = refused(oci.choose_manifest, raw(doc), "linux", "amd64")
        assert err.code == AosCode.INVALID_ARGUMENT
        assert "not a JSON object" in err.message


class TestParseManifest:
    def test_config_and_layers_in_order(self) -> None:
        doc = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"digest": D["cfg"], "size": 10},
            "layers": [{"digest": D["l2"]}, {"digest": D["l1"]}],
        }
        parsed, config, layers = oci.parse_manifest(raw(doc))
        assert parsed == doc
        assert config == D["cfg"]
        assert layers == (D["l2"], D["l1"])

    def test_docker_v2_media_type_and_no_layers(self) -> None:
        doc = {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": D["cfg"]},
            "layers": [],
        }
        assert oci.parse_manifest(raw(doc))[1:] == (D["cfg"], ())

    @pytest.mark.parametrize(
        ("doc", "words"),
        [
            ({"layers": []}, "no config"),
            ({"mediaType": MANIFEST, "layers": []}, "config has no digest"),
            ({"config": {"size": 1}, "layers": []}, "config has no digest"),
            ({"config": "sha256:x", "layers": []}, "config has no digest"),
            ({"config": {"digest": D["cfg"]}}, "no layers list"),
            ({"config": {"digest": D["cfg"]}, "layers": {"digest": "x"}}, "no layers list"),
            ({"config": {"digest": D["cfg"]}, "layers": [{"digest": D["l1"]}, {}]}, "layer"),
            ({"config": {"digest": D["cfg"]}, "layers": [D["l1"]]}, "layer has no digest"),
            ({"mediaType": ["x"], "layers": []}, "no config"),
            ({"mediaType": {"a": 1}, "config": {"digest": 5}, "layers": []}, "config"),
        ],
    )
    def test_malformed_manifests_are_refused(self, doc: dict[str, Any], words: str) -> None:
        err = refused(oci.parse_manifest, raw(doc))
        assert err.code == AosCode.INVALID_ARGUMENT
        assert words in err.message

    def test_not_json(self) -> None:
        err = refused(oci.parse_manifest, b"\x00garbage")
        assert "image manifest is not valid JSON" in err.message


class TestItemConfigDigest:
    def test_the_descriptor_the_manifest_names(self) -> None:
        doc = {
            "config": {"digest": D["cfg"]},
            "aosItemConfig": {
                "mediaType": oci.ITEM_CONFIG_MEDIA_TYPE,
                "digest": D["item"],
                "size": 300,
            },
            "layers": [],
        }
        assert oci.item_config_digest(doc) == D["item"]

    def test_a_plain_oci_manifest_names_none(self) -> None:
        assert oci.item_config_digest({"config": {"digest": D["cfg"]}, "layers": []}) is None
        assert oci.item_config_digest({"aosItemConfig": None}) is None

    def test_the_key_is_read_ignoring_case_as_aoscore_does(self) -> None:
        assert oci.item_config_digest({"AosItemConfig": {"digest": D["item"]}}) == D["item"]
        exact_wins = {"AOSITEMCONFIG": {"digest": D["l1"]}, "aosItemConfig": {"digest": D["item"]}}
        assert oci.item_config_digest(exact_wins) == D["item"]

    @pytest.mark.parametrize("bad", [5, "sha256:x", [], {"size": 3}, {"digest": 7}])
    def test_a_descriptor_without_a_digest_is_refused_as_bad_input(self, bad: Any) -> None:
        err = refused(oci.item_config_digest, {"aosItemConfig": bad})
        assert err.code == AosCode.INVALID_ARGUMENT
        assert "aosItemConfig has no digest" in err.message


class TestImagePlatform:
    def test_os_architecture_variant(self) -> None:
        doc = {"os": "linux", "architecture": "arm", "variant": "v7", "rootfs": {}}
        assert oci.image_platform(raw(doc)) == ("linux", "arm", "v7")

    def test_missing_or_empty_fields_are_none(self) -> None:
        assert oci.image_platform(raw({"architecture": "amd64"})) == (None, "amd64", None)
        assert oci.image_platform(raw({"os": "", "variant": ""})) == (None, None, None)

    def test_keys_are_read_ignoring_case(self) -> None:
        assert oci.image_platform(raw({"OS": "linux", "Architecture": "amd64"}))[:2] == (
            "linux",
            "amd64",
        )

    def test_a_field_that_is_not_a_string_is_refused(self) -> None:
        err = refused(oci.image_platform, raw({"os": "linux", "architecture": 64}))
        assert err.code == AosCode.INVALID_ARGUMENT
        assert "architecture" in err.message

    @pytest.mark.parametrize("text", [b"", b"[]", b"\xff"])
    def test_not_a_json_object_is_refused(self, text: bytes) -> None:
        err = refused(oci.image_platform, text)
        assert err.code == AosCode.INVALID_ARGUMENT
        assert "image config" in err.message


class TestIsIndex:
    def test_by_media_type_or_shape(self) -> None:
        assert oci.is_index({"mediaType": INDEX})
        assert oci.is_index(
            {"mediaType": "application/vnd.docker.distribution.manifest.list.v2+json"}
        )
        assert oci.is_index({"manifests": []})
        assert not oci.is_index({"mediaType": MANIFEST, "config": {}, "layers": []})
        assert not oci.is_index({"manifests": [], "layers": []})
        assert not oci.is_index({"mediaType": ["list"], "layers": []})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "mediaType",
                    "manifests",
                    "platform",
                    "os",
                    "architecture",
                    "digest",
                    "config",
                    "layers",
                    "aosItemConfig",
                    "variant",
                ]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


class TestAnyInput:
    @settings(max_examples=100, deadline=None)
    @given(json_values)
    def test_only_blob_errors_come_out(self, doc: Any) -> None:
        # bad documents from a registry end in a refused item, never in an agent crash
        data = raw(doc)
        for call in (
            lambda: oci.choose_manifest(data, "linux", "amd64"),
            lambda: oci.parse_manifest(data),
            lambda: oci.is_index(oci.load_document(data)),
            lambda: oci.item_config_digest(oci.parse_manifest(data)[0]),
            lambda: oci.image_platform(data),
        ):
            with contextlib.suppress(BlobError):
                call()


# What `docker push` and `docker manifest push` (engine 20.10) put in a registry for an image
# `docker build` made: Docker's v2 manifest and manifest list, Docker's config, gzip layers.
DOCKER_MANIFEST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
    "config": {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "size": 3028,
        "digest": D["cfg"],
    },
    "layers": [
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 1064344,
            "digest": D["l1"],
        },
        {
            "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
            "size": 130,
            "digest": D["l2"],
        },
    ],
}
DOCKER_LIST = {
    "schemaVersion": 2,
    "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifests": [
        {
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "size": 1150,
            "digest": D[arch],
            "platform": {"architecture": arch, "os": "linux"},
        }
        for arch in ("amd64", "arm64")
    ],
}


class TestDockerImages:
    def test_the_media_type_constants_are_the_ones_docker_writes(self) -> None:
        assert DOCKER_MANIFEST["mediaType"] == oci.DOCKER_MANIFEST_TYPE
        assert DOCKER_LIST["mediaType"] == oci.DOCKER_LIST_TYPE
        assert {oci.DOCKER_LIST_TYPE, oci.OCI_INDEX_TYPE} == oci.INDEX_TYPES
        assert {oci.DOCKER_MANIFEST_TYPE, oci.OCI_MANIFEST_TYPE} == oci.MANIFEST_TYPES

    def test_a_docker_v2_manifest_names_its_config_and_layers(self) -> None:
        doc, config, layers = oci.parse_manifest(raw(DOCKER_MANIFEST))
        assert config == D["cfg"]
        assert layers == (D["l1"], D["l2"])
        assert not oci.is_index(doc)
        assert oci.item_config_digest(doc) is None

    def test_a_docker_manifest_list_is_an_index_with_one_manifest_per_platform(self) -> None:
        assert oci.is_index(oci.load_document(raw(DOCKER_LIST)))
        assert oci.choose_manifest(raw(DOCKER_LIST), "linux", "arm64") == D["arm64"]
        assert oci.choose_manifest(raw(DOCKER_LIST), "linux", "amd64") == D["amd64"]

    def test_docker_config_platform(self) -> None:
        config = raw({"architecture": "amd64", "os": "linux", "config": {"User": "1000"}})
        assert oci.image_platform(config) == ("linux", "amd64", None)


class TestItemConfigDescriptor:
    def test_the_whole_descriptor_is_returned(self) -> None:
        item = {"mediaType": oci.ITEM_CONFIG_MEDIA_TYPE, "digest": D["item"], "size": 12}
        assert oci.item_config_descriptor({**DOCKER_MANIFEST, "aosItemConfig": item}) == item

    def test_none_for_a_plain_image(self) -> None:
        assert oci.item_config_descriptor(DOCKER_MANIFEST) is None

    def test_a_descriptor_without_digest_is_refused(self) -> None:
        error = refused(oci.item_config_descriptor, {"aosItemConfig": {"size": 1}})
        assert error.code == AosCode.INVALID_ARGUMENT
