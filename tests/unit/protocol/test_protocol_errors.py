"""Bad input, one case at a time: each refusal names the exact JSON path and a specific reason."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from aoscore_py.errors import AosCode, ProtocolError
from aoscore_py.protocol import (
    MAX_MESSAGE_BYTES,
    MAX_NESTING,
    Ack,
    DesiredStatus,
    Envelope,
    Identity,
    Nack,
    UnitStatus,
    check_digest,
    codec,
    parse_any,
    parse_frame,
    parse_message,
    parse_node_config,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4


def refusal(raw: Any, **kwargs: Any) -> tuple[str, str]:
    """(path, reason) of the ProtocolError that parse_any raises."""
    with pytest.raises(ProtocolError) as info:
        parse_any(raw, **kwargs)
    assert info.value.code == AosCode.INVALID_ARGUMENT
    return info.value.path, info.value.reason


def desired(**sections: Any) -> dict[str, Any]:
    return {"messageType": "desiredStatus", **sections}


def item(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "item": {"id": "i1", "type": "service"},
        "version": "1.0",
        "indexDigest": DIGEST,
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def node_with_rule(kind: str, min_timeout: Any) -> dict[str, Any]:
    """A node config with one alert rule, for reading `minTimeout`."""
    rule = {"minTimeout": min_timeout, "minThreshold": 1, "maxThreshold": 2}
    return {"node": {"codename": "n"}, "alertRules": {kind: rule}}


def frame(data: dict[str, Any], **header: Any) -> dict[str, Any]:
    head = {"version": 7, "systemId": "unit-1", "txn": "t-1"}
    head.update(header)
    return {"header": {k: v for k, v in head.items() if v is not ...}, "data": data}


class TestNotJson:
    def test_syntax_error(self) -> None:
        path, reason = refusal(b'{"messageType": "ack"')
        assert path == "$"
        assert reason.startswith("not valid JSON: ")

    def test_empty_input(self) -> None:
        path, reason = refusal(b"")
        assert (path, reason[:15]) == ("$", "not valid JSON:")

    @pytest.mark.parametrize(
        "raw",
        [b'{"messageType": "\xff"}', b"\xfe\xff{}", b'"\xed\xa0\x80"', "{\ud800}"],
        ids=["invalid-byte", "bom-utf16", "encoded-surrogate", "str-with-surrogate"],
    )
    def test_not_utf8(self, raw: bytes | str) -> None:
        assert refusal(raw) == ("$", "not UTF-8")

    @pytest.mark.parametrize(
        ("raw", "kind"),
        [(b"[]", "array"), (b"42", "integer"), (b"1.5", "number"), (b'"ack"', "string")],
    )
    def test_top_level_not_an_object(self, raw: bytes, kind: str) -> None:
        assert refusal(raw) == ("$", f"expected object, got {kind}")

    @pytest.mark.parametrize(
        ("value", "kind"), [(None, "null"), ([], "array"), (3, "integer"), (object(), "object")]
    )
    def test_decoded_value_not_an_object(self, value: Any, kind: str) -> None:
        path, reason = refusal(value)
        assert path == "$"
        assert reason.startswith("expected object, got ")

    def test_too_large(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert MAX_MESSAGE_BYTES == 16 * 1024 * 1024
        raw = b" " * (MAX_MESSAGE_BYTES + 1)
        assert refusal(raw) == (
            "$",
            f"message too large ({MAX_MESSAGE_BYTES + 1} bytes, limit {MAX_MESSAGE_BYTES})",
        )
        monkeypatch.setattr(codec, "MAX_MESSAGE_BYTES", 21)
        assert refusal(b'{"messageType":"ack"} ') == ("$", "message too large (22 bytes, limit 21)")
        assert parse_any(b'{"messageType":"ack"}') == Ack()

    def test_deep_nesting_beyond_orjson(self) -> None:
        assert refusal(b"[" * 100_000 + b"]" * 100_000) == ("$", "nesting too deep")
        assert refusal(b'{"a":' * 100_000) == ("$", "nesting too deep")

    def test_nesting_limit(self) -> None:
        def nested(depth: int) -> bytes:
            return b'{"messageType":"ack","x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"

        assert parse_any(nested(MAX_NESTING)) == Ack()  # unknown, deep, but within the limit
        assert refusal(nested(MAX_NESTING + 1)) == ("$", "nesting too deep")

    def test_cyclic_object(self) -> None:
        data: dict[str, Any] = {"messageType": "ack"}
        data["self"] = data
        assert refusal(data) == ("$", "nesting too deep")


class TestWrongTypes:
    @pytest.mark.parametrize(
        ("value", "kind"), [("1", "string"), (True, "boolean"), (1.5, "number"), (1.0, "number")]
    )
    def test_integer_field(self, value: Any, kind: str) -> None:
        msg = desired(instances=[{"item": {"id": "a"}, "subject": {"id": "b"}, "priority": value}])
        assert refusal(msg) == ("$.instances[0].priority", f"expected integer, got {kind}")

    def test_string_field(self) -> None:
        assert refusal(desired(items=[item(version=1)])) == (
            "$.items[0].version",
            "expected string, got integer",
        )

    def test_boolean_field(self) -> None:
        msg = desired(subjects=[{"identity": {"id": "s"}, "type": "user", "isReportedFromUnit": 1}])
        assert refusal(msg) == ("$.subjects[0].isReportedFromUnit", "expected boolean, got integer")

    def test_array_and_object_fields(self) -> None:
        assert refusal(desired(items={})) == ("$.items", "expected array, got object")
        assert refusal(desired(items=[item(item="i1")])) == (
            "$.items[0].item",
            "expected object, got string",
        )

    def test_integer_out_of_range(self) -> None:
        msg = {"messageType": "nack", "retryAfter": 2**64}
        assert refusal(msg) == ("$.retryAfter", "integer out of range")
        # As JSON text orjson reads it as a float: refused as not an integer.
        assert refusal(b'{"messageType":"nack","retryAfter":18446744073709551616}') == (
            "$.retryAfter",
            "expected integer, got number",
        )

    def test_negative_count(self) -> None:
        msg = desired(instances=[{"item": {"id": "a"}, "subject": {"id": "b"}, "numInstances": -1}])
        assert refusal(msg) == ("$.instances[0].numInstances", "expected an integer >= 0, got -1")

    def test_float_field_refuses_nan_from_a_dict(self) -> None:
        node = node_with_rule("cpu", 1)
        node["alertRules"]["cpu"]["minThreshold"] = float("nan")
        body = {"version": "1", "formatVersion": "1", "nodes": [node]}
        assert refusal(body, message_type="unitConfig") == (
            "$.nodes[0].alertRules.cpu.minThreshold",
            "expected a finite number",
        )

    def test_header_fields(self) -> None:
        ack = {"messageType": "ack"}
        assert refusal(frame(ack, version="7")) == (
            "$.header.version",
            "expected integer, got string",
        )
        assert refusal(frame(ack, systemId=1)) == (
            "$.header.systemId",
            "expected string, got integer",
        )
        assert refusal(frame(ack, txn=...)) == ("$.header.txn", "missing required field")
        env = parse_frame(orjson.dumps(frame(ack, systemId="other")))
        assert env.header.system_id == "other"  # only the caller knows which unit it is

    @pytest.mark.parametrize("version", [0, 6, 8, -7])
    def test_another_version_is_refused_before_the_rest(self, version: int) -> None:
        reason = f"unsupported protocol version {version} (this unit speaks 7)"
        for data in ({"messageType": "ack"}, {"messageType": "somethingNew"}, {}):
            # Whatever else is wrong (no txn, an unknown body), the version is named.
            with pytest.raises(ProtocolError) as info:
                parse_frame(frame(data, version=version, txn=...))
            assert (info.value.path, info.value.reason) == ("$.header.version", reason)
            assert info.value.code == AosCode.NOT_SUPPORTED
        with pytest.raises(ProtocolError) as info:
            parse_any({"HEADER": {"Version": version}, "data": {}})
        assert info.value.path == "$.header.version"  # paths use the protocol's spelling

    def test_node_attrs_must_be_strings(self) -> None:
        node = {"identity": {"codename": "n"}, "state": "error", "isConnected": False}
        msg = {"messageType": "unitStatus", "nodes": [{**node, "attrs": {"a b": 1}}]}
        assert refusal(msg) == ('$.nodes[0].attrs["a b"]', "expected string, got integer")


class TestMissingFields:
    @pytest.mark.parametrize(
        ("fields", "path"),
        [
            ({"item": {"type": "service"}}, "$.items[0].item.id"),
            ({"item": {"codename": "c", "type": "service"}}, "$.items[0].item.id"),
            ({"item": {"id": "i"}}, "$.items[0].item.type"),
            ({"owner": {"codename": "o"}}, "$.items[0].owner.id"),
            ({"version": ...}, "$.items[0].version"),
            ({"indexDigest": ...}, "$.items[0].indexDigest"),
            ({"indexDigest": None}, "$.items[0].indexDigest"),
        ],
    )
    def test_desired_item(self, fields: dict[str, Any], path: str) -> None:
        assert refusal(desired(items=[item(**fields)])) == (path, "missing required field")

    def test_other_desired_sections(self) -> None:
        assert refusal(desired(nodes=[{"item": {"id": "n"}, "state": "paused"}])) == (
            "$.nodes[0].item.codename",
            "missing required field",
        )
        assert refusal(desired(nodes=[{"item": {"codename": "n"}}])) == (
            "$.nodes[0].state",
            "missing required field",
        )
        assert refusal(desired(instances=[{"item": {"id": "a"}, "subject": {}}])) == (
            "$.instances[0].subject.id",
            "missing required field",
        )
        assert refusal(desired(subjects=[{"identity": {"id": "s"}}])) == (
            "$.subjects[0].type",
            "missing required field",
        )

    @pytest.mark.parametrize("field", ["digest", "urls", "sha256", "size"])
    def test_blob(self, field: str) -> None:
        blob = {"digest": DIGEST, "urls": ["u"], "sha256": "00", "size": 1}
        del blob[field]
        msg = {"messageType": "blobUrls", "items": [blob]}
        assert refusal(msg) == (f"$.items[0].{field}", "missing required field")

    def test_paths_inside_a_frame_start_at_the_root(self) -> None:
        raw = frame(desired(items=[item(item={"type": "service"})]))
        assert refusal(raw) == ("$.data.items[0].item.id", "missing required field")
        assert refusal(frame(desired(), systemId=...)) == (
            "$.header.systemId",
            "missing required field",
        )
        no_data = {"header": frame({})["header"]}
        assert refusal(no_data) == ("$.data", "missing required field")

    def test_unit_status_identity_needs_a_key(self) -> None:
        msg = {"messageType": "unitStatus", "subjects": [{"title": "t"}]}
        assert refusal(msg) == ("$.subjects[0].id", "missing required field (id or codename)")


class TestValues:
    def test_unknown_enum_value(self) -> None:
        msg = {
            "messageType": "unitStatus",
            "items": [{"item": {"id": "i"}, "version": "1", "state": "Installed"}],
        }
        assert refusal(msg) == (
            "$.items[0].state",
            "unknown value 'Installed' for ItemState (expected one of: unknown, downloading, "
            "pending, installing, installed, removing, removed, failed)",
        )

    def test_unknown_identity_type(self) -> None:
        path, reason = refusal(desired(items=[item(item={"id": "i", "type": "Service"})]))
        assert path == "$.items[0].item.type"
        assert reason.startswith("unknown value 'Service' for ItemType (expected one of: service,")

    def test_message_type(self) -> None:
        assert refusal({"messageType": "hello"}) == (
            "$.messageType",
            "unknown message type 'hello' (expected one of: desiredStatus, unitStatus, ack, "
            "nack, requestBlobUrls, blobUrls, updateState)",
        )
        assert refusal({"messageType": "ack"}, message_type="nack") == (
            "$.messageType",
            "expected 'nack', got 'ack'",
        )
        path, reason = refusal({}, message_type="hello")
        assert (path, reason[:30]) == ("$", "unknown message type 'hello' (")
        with pytest.raises(ProtocolError) as info:
            parse_message({}, message_type="unitConfig")  # fragments are for parse_any only
        assert info.value.path == "$"

    def test_bad_base64_and_hex(self) -> None:
        cert = desired(certificates=[{"certificate": "not base64!", "fingerprint": "f"}])
        assert refusal(cert) == ("$.certificates[0].certificate", "not valid base64")
        blob = {"digest": DIGEST, "urls": [], "sha256": "0g", "size": 0}
        assert refusal({"messageType": "blobUrls", "items": [blob]}) == (
            "$.items[0].sha256",
            "not valid hex",
        )

    def test_bad_timestamps(self) -> None:
        ack = {"messageType": "ack"}
        assert refusal(frame(ack, createdAt="yesterday")) == (
            "$.header.createdAt",
            "invalid timestamp 'yesterday' (expected RFC 3339)",
        )
        assert refusal(frame(ack, createdAt="2023-13-01T00:00:00Z")) == (
            "$.header.createdAt",
            "invalid timestamp '2023-13-01T00:00:00Z'",
        )

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("2023-10-01T12:00:00Z", datetime(2023, 10, 1, 12, tzinfo=UTC)),
            ("2023-10-01t12:00:00.5z", datetime(2023, 10, 1, 12, 0, 0, 500000, tzinfo=UTC)),
            (
                "2023-10-01T12:00:00.123456789+02:00",
                datetime(2023, 10, 1, 10, 0, 0, 123456, tzinfo=UTC),
            ),
            ("2023-10-01T00:30:00-01:00", datetime(2023, 10, 1, 1, 30, tzinfo=UTC)),
        ],
    )
    def test_timestamps_read_as_utc(self, text: str, expected: datetime) -> None:
        env = parse_any(frame({"messageType": "ack"}, createdAt=text))
        assert isinstance(env, Envelope)
        assert env.header.created_at == expected
        assert env.header.created_at is not None
        assert env.header.created_at.utcoffset() is not None

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            (5, 5.0),
            (2.5, 2.5),
            ("PT5S", 5.0),
            ("PT1M30S", 90.0),
            ("PT0.5S", 0.5),
            ("P1DT1H", 90000.0),
        ],
    )
    def test_durations(self, value: Any, seconds: float) -> None:
        node = parse_node_config(node_with_rule("ram", value))
        assert node.alert_rules is not None
        assert node.alert_rules.ram is not None
        assert node.alert_rules.ram.min_timeout == seconds

    @pytest.mark.parametrize("value", ["5s", "P1Y", "PT", "P", "-PT5S", "PT5", "P1DT"])
    def test_bad_durations(self, value: str) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_node_config(node_with_rule("cpu", value))
        assert info.value.path == "$.alertRules.cpu.minTimeout"
        assert info.value.reason.startswith(f"invalid duration {value!r} (expected ISO 8601")

    def test_negative_duration_number(self) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_node_config(node_with_rule("cpu", -1))
        assert (info.value.path, info.value.reason) == (
            "$.alertRules.cpu.minTimeout",
            "expected a number >= 0, got -1.0",
        )


class TestNodeLabelLimits:
    def node(self, labels: list[str]) -> dict[str, Any]:
        return {"node": {"codename": "n"}, "labels": labels}

    def test_within_limits(self) -> None:
        labels = ["x" * 64] * 4
        assert parse_node_config(self.node(labels)).labels == tuple(labels)

    def test_too_many(self) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_node_config(self.node(["a"] * 5))
        assert (info.value.path, info.value.reason) == ("$.labels", "too many labels (5, limit 4)")
        assert info.value.code == AosCode.NO_MEMORY

    def test_too_long_inside_a_desired_status(self) -> None:
        config = {"version": "1", "formatVersion": "1", "nodes": [self.node(["ok", "y" * 65])]}
        with pytest.raises(ProtocolError) as info:
            parse_message(desired(unitConfig=config))
        assert info.value.path == "$.unitConfig.nodes[0].labels[1]"
        assert info.value.reason == "label too long (65 characters, limit 64)"
        assert info.value.code == AosCode.NO_MEMORY

    def test_instance_labels_are_not_limited(self) -> None:
        inst = {"item": {"id": "a"}, "subject": {"id": "b"}, "labels": ["z" * 100] * 6}
        msg = parse_message(desired(instances=[inst]))
        assert isinstance(msg, DesiredStatus)
        assert len(msg.instances[0].labels) == 6


class TestLenientReading:
    def test_keys_match_in_any_case(self) -> None:
        assert parse_any({"MESSAGETYPE": "ack", "CorrelationID": "c"}) == Ack(correlation_id="c")
        env = parse_any(
            {"HEADER": {"VERSION": 7, "systemID": "u", "Txn": "t"}, "Data": {"messageType": "ack"}}
        )
        assert isinstance(env, Envelope)
        assert (env.header.system_id, env.header.txn) == ("u", "t")

    def test_exact_key_wins_over_other_cases(self) -> None:
        assert parse_any({"messageType": "ack", "CORRELATIONID": "a", "correlationId": "b"}) == Ack(
            correlation_id="b"
        )

    def test_enum_values_stay_case_sensitive(self) -> None:
        path, _ = refusal(desired(nodes=[{"item": {"codename": "n"}, "state": "PAUSED"}]))
        assert path == "$.nodes[0].state"

    def test_null_counts_as_missing(self) -> None:
        assert (
            parse_any({"messageType": "nack", "correlationId": None, "retryAfter": None}) == Nack()
        )
        inst = {"item": {"id": "a"}, "subject": {"id": "b"}, "priority": None, "labels": None}
        msg = parse_message(desired(instances=[inst], items=None, unitConfig=None))
        assert isinstance(msg, DesiredStatus)
        assert (msg.instances[0].priority, msg.instances[0].labels) == (0, ())
        assert (msg.items, msg.unit_config) == ((), None)
        assert refusal(desired(items=[item(item=None)])) == (
            "$.items[0].item",
            "missing required field",
        )

    def test_unknown_fields_are_ignored(self) -> None:
        msg = desired(
            futureSection=[{"anything": True}],
            items=[item(extra=1, item={"id": "i", "type": "layer", "urn": "x"})],
        )
        parsed = parse_message(msg)
        assert isinstance(parsed, DesiredStatus)
        assert parsed.items[0].item == Identity(id="i", type="layer")
        body = {"messageType": "unitStatus", "bootId": "b", "seq": 3, "whatever": {"deep": [1]}}
        assert parse_any(body) == UnitStatus(boot_id="b", seq=3)

    def test_empty_correlation_id_is_absent(self) -> None:
        assert parse_any({"messageType": "ack", "correlationId": ""}) == Ack(correlation_id=None)

    def test_placeholder_digest_only_when_lenient(self) -> None:
        raw = desired(items=[item(indexDigest="sha256:abcdef")])
        assert refusal(raw) == (
            "$.items[0].indexDigest",
            "invalid digest 'sha256:abcdef': sha256 needs 64 hex digits, got 6",
        )
        msg = parse_message(raw, strict_digests=False)
        assert isinstance(msg, DesiredStatus)
        assert msg.items[0].index_digest == "sha256:abcdef"
        assert parse_any(raw, strict_digests=False) == msg
        # The flag holds for that call only.
        assert refusal(raw)[0] == "$.items[0].indexDigest"

    def test_stored_desired_status_without_message_type(self) -> None:
        stored = {"items": [item()]}
        msg = parse_message(stored, message_type="desiredStatus")
        assert isinstance(msg, DesiredStatus)
        assert msg.items[0].item.key == "i1"
        assert parse_any(orjson.dumps(stored), message_type="desiredStatus") == msg


BAD_DIGESTS = [
    ("sha256:" + "0123456789ABCDEF" * 4, "hex digits must be lowercase"),
    ("sha256:" + "ab" * 33, "sha256 needs 64 hex digits, got 66"),
    ("sha384:" + "ab" * 32, "sha384 needs 96 hex digits, got 64"),
    ("sha256:", "sha256 needs 64 hex digits, got 0"),
    ("md5:" + "ab" * 16, "unsupported algorithm 'md5' (expected one of: sha256, sha384, sha512)"),
    (
        "SHA256:" + "ab" * 32,
        "unsupported algorithm 'SHA256' (expected one of: sha256, sha384, sha512)",
    ),
    ("ab" * 32, "expected '<algorithm>:<hex>' with algorithm one of: sha256, sha384, sha512"),
    ("", "expected '<algorithm>:<hex>' with algorithm one of: sha256, sha384, sha512"),
    ("sha256:" + "g" * 64, "not hex after the colon"),
    ("sha256: " + "a" * 63, "not hex after the colon"),
    ("sha256:" + "a" * 63 + "\n", "not hex after the colon"),
    ("sha256:" + "\u0661" * 64, "not hex after the colon"),
]
BAD_DIGEST_IDS = [
    "uppercase",
    "too-long",
    "sha384-short",
    "empty-hex",
    "md5",
    "uppercase-algorithm",
    "no-colon",
    "empty",
    "not-hex",
    "space",
    "newline",
    "arabic-digits",
]


class TestDigests:
    """PROTOCOL.md, "Digests anywhere": our rule, checked where each digest is read."""

    @pytest.mark.parametrize(
        ("algorithm", "length"), [("sha256", 64), ("sha384", 96), ("sha512", 128)]
    )
    def test_valid(self, algorithm: str, length: int) -> None:
        value = f"{algorithm}:" + ("0123456789abcdef" * 8)[:length]
        assert check_digest(value) == value

    @pytest.mark.parametrize(("value", "problem"), BAD_DIGESTS, ids=BAD_DIGEST_IDS)
    def test_check_digest_says_why(self, value: str, problem: str) -> None:
        with pytest.raises(ValueError) as info:
            check_digest(value)
        assert str(info.value) == f"invalid digest {value!r}: {problem}"

    @pytest.mark.parametrize(("value", "problem"), BAD_DIGESTS, ids=BAD_DIGEST_IDS)
    def test_refused_in_every_field_with_its_path(self, value: str, problem: str) -> None:
        reason = f"invalid digest {value!r}: {problem}"
        blob = {"digest": value, "urls": ["u"], "sha256": "00", "size": 1}
        cases = [
            (desired(items=[item(), item(indexDigest=value)]), "$.items[1].indexDigest"),
            ({"messageType": "blobUrls", "items": [blob]}, "$.items[0].digest"),
            ({"messageType": "requestBlobUrls", "digests": [DIGEST, value]}, "$.digests[1]"),
        ]
        for raw, path in cases:
            assert refusal(raw) == (path, reason)
            assert refusal(frame(raw)) == (path.replace("$", "$.data", 1), reason)
            parse_any(raw, strict_digests=False)  # AosCore reads any string

    def test_not_a_string(self) -> None:
        assert refusal({"messageType": "requestBlobUrls", "digests": [7]}) == (
            "$.digests[0]",
            "expected string, got integer",
        )

    def test_a_huge_digest_is_quoted_short(self) -> None:
        value = "sha256:" + "a" * 10_000
        path, reason = refusal(desired(items=[item(indexDigest=value)]))
        assert path == "$.items[0].indexDigest"
        assert reason.endswith("...': sha256 needs 64 hex digits, got 10000")
        assert len(reason) < 250
