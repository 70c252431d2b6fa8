"""`aoscore cloud publish` with item config options: the options become AosCore's item config,
the image names it as `aosItemConfig`, and bad values exit 2 naming the option. No registry:
`publish` is replaced by a recorder; the image builder runs for real."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from aoscore_py import logs
from aoscore_py.blobs import oci
from aoscore_py.cli.cloud import cloud, item_config_of
from aoscore_py.cloud import service
from aoscore_py.cloud.oci import OciImage, build_test_image
from aoscore_py.nodes.itemconfig import (
    ItemConfig,
    Quotas,
    RequestedResources,
    item_config_json,
    parse_item_config,
)

MIB = 1 << 20


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `cloud publish` asked `publish` for, one dict of keyword arguments per call."""
    calls: list[dict[str, Any]] = []

    def record(cloud_dir: Path, name: str, **kwargs: Any) -> OciImage:
        calls.append(kwargs)
        return OciImage(name, "sha256:" + "0" * 64, {})

    monkeypatch.setattr(service, "publish", record)
    monkeypatch.setattr(logs, "configure", lambda *args: None)
    return calls


def invoke(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(
        cloud, ["publish", "svc", "--cloud-dir", str(tmp_path), "--registry", "http://r", *args]
    )


class TestOptions:
    def test_every_option_lands_in_the_item_config(
        self, tmp_path: Path, published: list[dict[str, Any]]
    ) -> None:
        result = invoke(
            tmp_path,
            *("--cpu-limit", "5000", "--ram-limit", "512MiB", "--pids-limit", "64"),
            *("--requested-cpu", "1000", "--requested-ram", "2G"),
            *("--runtime", "runc", "--runtime", "crun", "--runtime", "runc"),
        )
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "sha256:" + "0" * 64
        (call,) = published
        assert call["item_config"] == ItemConfig(
            runtimes=("runc", "crun"),
            quotas=Quotas(cpu_dmips_limit=5000, ram_limit=512 * MIB, pids_limit=64),
            requested_resources=RequestedResources(cpu=1000, ram=2048 * MIB),
        )

    def test_without_them_the_image_stays_plain(
        self, tmp_path: Path, published: list[dict[str, Any]]
    ) -> None:
        assert invoke(tmp_path).exit_code == 0
        assert published[0]["item_config"] is None

    @pytest.mark.parametrize(
        ("args", "option"),
        [
            (("--ram-limit", "lots"), "--ram-limit"),
            (("--ram-limit", "0"), "--ram-limit"),
            (("--requested-ram", "-1"), "--requested-ram"),
            (("--requested-ram", "99999999999T"), "--requested-ram"),
            (("--cpu-limit", "0"), "--cpu-limit"),
            (("--cpu-limit", "1.5"), "--cpu-limit"),
            (("--requested-cpu", "-1"), "--requested-cpu"),
            (("--pids-limit", "0"), "--pids-limit"),
            (("--pids-limit", "many"), "--pids-limit"),
            (("--runtime", ""), "--runtime"),
            (("--runtime", "run c"), "--runtime"),
        ],
    )
    def test_bad_values_exit_2_naming_the_option(
        self, tmp_path: Path, published: list[dict[str, Any]], args: tuple[str, ...], option: str
    ) -> None:
        result = invoke(tmp_path, *args)
        assert result.exit_code == 2, result.output
        assert f"'{option}'" in result.output
        assert published == []

    def test_help_explains_the_item_config(self) -> None:
        text = CliRunner().invoke(cloud, ["publish", "--help"]).output
        for words in ("aosItemConfig", "quotas.ramLimit", "512MiB", "requestedResources.cpu"):
            assert words in text


class TestItemConfigOf:
    def test_only_what_is_given(self) -> None:
        assert item_config_of() is None
        assert item_config_of(runtimes=("docker",)) == ItemConfig(runtimes=("docker",))
        assert item_config_of(requested_ram=0) == ItemConfig(
            requested_resources=RequestedResources(ram=0)
        )


class TestImage:
    def test_the_manifest_names_the_item_config_blob(self) -> None:
        config = ItemConfig(
            runtimes=("docker",),
            quotas=Quotas(cpu_dmips_limit=800, ram_limit=64 * MIB, pids_limit=10),
            requested_resources=RequestedResources(cpu=100, ram=MIB),
        )
        image = build_test_image("svc", item_config=item_config_json(config))
        descriptor = image.manifest["aosItemConfig"]
        assert descriptor["mediaType"] == oci.ITEM_CONFIG_MEDIA_TYPE
        assert descriptor["mediaType"] == "application/vnd.aos.item.config.v1+json"
        raw = image.blobs[descriptor["digest"]]
        assert descriptor["size"] == len(raw)
        assert image.item_config_digest == descriptor["digest"]
        document = orjson.loads(raw)
        assert document["quotas"] == {"cpuDMIPSLimit": 800, "ramLimit": 64 * MIB, "pidsLimit": 10}
        assert document["requestedResources"] == {"cpu": 100, "ram": MIB}
        assert document["runtimes"] == [{"codename": "docker"}]
        assert parse_item_config(raw) == config

    def test_same_config_same_digests_and_a_plain_image_names_none(self) -> None:
        document = item_config_json(ItemConfig(quotas=Quotas(ram_limit=MIB)))
        one = build_test_image("svc", item_config=document)
        assert one.blobs == build_test_image("svc", item_config=document).blobs
        plain = build_test_image("svc")
        assert plain.item_config_digest is None
        assert "aosItemConfig" not in plain.manifest
        assert one.layer_digests == plain.layer_digests
