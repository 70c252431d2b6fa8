"""`POST /images` is read with the same rules as `aoscore cloud publish`: a bad field is named."""

from __future__ import annotations

from typing import Any

import pytest

from aoscore_py.cloud.publishing import PublishRequest
from aoscore_py.errors import ConfigError
from aoscore_py.nodes.itemconfig import ItemConfig, Quotas, RequestedResources


def test_a_test_image_with_an_item_config() -> None:
    wanted = PublishRequest.from_json(
        {"name": "web", "ramLimit": 512, "requestedCpu": 0, "runtimes": ["crun", "crun"]}
    )
    assert wanted == PublishRequest(
        "web",
        item_config=ItemConfig(
            runtimes=("crun",),
            quotas=Quotas(ram_limit=512),
            requested_resources=RequestedResources(cpu=0),
        ),
    )


def test_an_existing_image() -> None:
    wanted = PublishRequest.from_json({"name": "app", "image": "docker-daemon:app:1"})
    assert (wanted.image, wanted.item_config, wanted.size) == ("docker-daemon:app:1", None, 0)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ([], "JSON object"),
        ({}, "name"),
        ({"name": "Web"}, "name"),
        ({"name": "web", "colour": 1}, "colour"),
        ({"name": "web", "ramLimit": 0}, "ramLimit"),
        ({"name": "web", "cpuLimit": True}, "cpuLimit"),
        ({"name": "web", "size": -1}, "size"),
        ({"name": "web", "startPeriod": "soon"}, "startPeriod"),
        ({"name": "web", "runtimes": ["no spaces"]}, "runtimes"),
        ({"name": "web", "image": ""}, "image"),
        ({"name": "web", "image": "oci:x", "ramLimit": 5}, "ramLimit: not with image"),
    ],
)
def test_a_bad_field_is_named(body: Any, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        PublishRequest.from_json(body)
