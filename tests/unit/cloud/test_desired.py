"""`aoscore cloud desired`'s pure part: an item argument read, a desired status built."""

from __future__ import annotations

import pytest

from aoscore_py.cloud.desired import WantedItem, build_desired, parse_item
from aoscore_py.protocol import dump_message, parse_message

DIGEST = "sha256:" + "c" * 64


@pytest.mark.parametrize(
    ("text", "item"),
    [
        (f"web={DIGEST}", WantedItem("web", DIGEST, 1)),
        (f"web={DIGEST}:3", WantedItem("web", DIGEST, 3)),
        (f"web={DIGEST}:0", WantedItem("web", DIGEST, 0)),
    ],
)
def test_items_are_read(text: str, item: WantedItem) -> None:
    assert parse_item(text) == item


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("web", "expected ID=DIGEST"),
        (f"={DIGEST}", "expected ID=DIGEST"),
        ("web=sha256:ABC", "lowercase"),
        (f"web={DIGEST}:x", "is not a number"),
        (f"web={DIGEST}:1:2", "expected ID=DIGEST"),
        ("web=md5:" + "c" * 32, "unsupported algorithm"),
    ],
)
def test_bad_items_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_item(text)


def test_what_is_built_parses_as_a_desired_status() -> None:
    ds = build_desired([WantedItem("web", DIGEST, 2)], nodes=["n1"], paused=["n1", "n2"])
    assert parse_message(dump_message(ds)) == ds
    assert [(n.item.key, n.state.value) for n in ds.nodes] == [("n1", "paused"), ("n2", "paused")]
