"""`foldedSeqs`, our addition to unitStatus: the seq ranges a full outbox folded into one full
status, written as `[[first, last], ...]` and read back the same; a bad pair is refused with its
JSON path."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.protocol import (
    RequestBlobUrls,
    UnitStatus,
    dump_message,
    parse_any,
    parse_message,
)


class TestRoundTrip:
    def test_ranges_are_written_as_pairs_and_read_back(self) -> None:
        status = UnitStatus(boot_id="b", seq=9, folded_seqs=((1, 3), (5, 5), (7, 8)))
        raw = dump_message(status)
        assert orjson.loads(raw)["foldedSeqs"] == [[1, 3], [5, 5], [7, 8]]
        assert raw.endswith(b'"seq":9,"foldedSeqs":[[1,3],[5,5],[7,8]]}')
        assert parse_message(raw) == status

    @pytest.mark.parametrize("folded", [None, ()])
    def test_nothing_folded_leaves_the_key_out(
        self, folded: tuple[tuple[int, int], ...] | None
    ) -> None:
        raw = dump_message(UnitStatus(seq=1, folded_seqs=folded))
        assert b"foldedSeqs" not in raw
        assert parse_message(raw).folded_seqs is None

    def test_a_status_without_the_key_reads_as_nothing_folded(self) -> None:
        """An AosCore status, which knows nothing of folding."""
        assert parse_any({"messageType": "unitStatus", "isDeltaInfo": False}).folded_seqs is None


class TestRefusal:
    @pytest.mark.parametrize(
        ("folded", "path"),
        [
            ([[3, 1]], "$.foldedSeqs[0]"),
            ([[1]], "$.foldedSeqs[0]"),
            ([[1, 2, 3]], "$.foldedSeqs[0]"),
            ([["a", 2]], "$.foldedSeqs[0][0]"),
            ([[1, "b"]], "$.foldedSeqs[0][1]"),
            ([[-1, 2]], "$.foldedSeqs[0][0]"),
            ([[1, 2], [4, 3]], "$.foldedSeqs[1]"),
            ([7], "$.foldedSeqs[0]"),
            ({"first": 1}, "$.foldedSeqs"),
        ],
        ids=[
            "reversed",
            "one-number",
            "three-numbers",
            "string-first",
            "string-last",
            "negative",
            "second-pair-reversed",
            "not-a-pair",
            "not-an-array",
        ],
    )
    def test_a_bad_pair_is_refused_with_its_path(self, folded: Any, path: str) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_any({"messageType": "unitStatus", "seq": 4, "foldedSeqs": folded})
        assert info.value.path == path
        assert info.value.code == AosCode.INVALID_ARGUMENT
        assert path in info.value.message

    def test_the_path_is_inside_the_frame_when_read_as_a_frame(self) -> None:
        raw = orjson.dumps(
            {
                "header": {"version": 7, "systemId": "unit-1", "txn": "t-1"},
                "data": {"messageType": "unitStatus", "foldedSeqs": [[3, 1]]},
            }
        )
        with pytest.raises(ProtocolError) as info:
            parse_any(raw)
        assert info.value.path == "$.data.foldedSeqs[0]"
        assert "first <= last" in info.value.reason


def test_a_blob_url_request_carries_its_boot_and_seq() -> None:
    """Our addition on requestBlobUrls, as on unitStatus: written when set, read back."""
    digest = "sha256:" + "b" * 64
    request = RequestBlobUrls("c-1", (digest,), boot_id="boot-1", seq=7)
    raw = dump_message(request)
    assert b'"bootId":"boot-1","seq":7' in raw
    assert parse_message(raw) == request
    bare = RequestBlobUrls("c-1", (digest,))
    assert b"bootId" not in dump_message(bare) and parse_message(dump_message(bare)) == bare
