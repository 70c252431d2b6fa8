"""Properties over generated messages: what we write reads back the same, and no input at all
makes the parser raise anything but `ProtocolError`."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protocol_strategies import (
    envelopes,
    json_values,
    messages,
    node_configs,
    unit_configs,
)

from aoscore_py.errors import ProtocolError
from aoscore_py.protocol import (
    DesiredStatus,
    Envelope,
    dump_frame,
    dump_message,
    parse_any,
    parse_frame,
    parse_message,
    parse_node_config,
    parse_unit_config,
    to_json,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Location = tuple[str | int, ...]


def assert_clean_refusal(exc: ProtocolError) -> None:
    """A refusal names a path from the root and is not our catch-all for bugs."""
    assert exc.path.startswith("$")
    assert exc.reason
    assert not exc.reason.startswith("internal error"), exc.reason


def locations(value: Any, here: Location = ()) -> Iterator[Location]:
    """Every place in a JSON value, the root included."""
    yield here
    if isinstance(value, dict):
        for key, item in value.items():
            yield from locations(item, (*here, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from locations(item, (*here, index))


def replaced(value: Any, where: Location, new: Any, *, delete: bool = False) -> Any:
    """A deep copy of `value` with the value at `where` replaced (or its key removed)."""
    if not where:
        return new
    root = copy.deepcopy(value)
    parent = root
    for step in where[:-1]:
        parent = parent[step]
    if delete and isinstance(parent, dict):
        del parent[where[-1]]
    else:
        parent[where[-1]] = new
    return root


def recased(value: Any, flip: list[bool]) -> Any:
    """The same JSON with field names in other cases; the keys of `attrs` are data, kept."""
    if isinstance(value, list):
        return [recased(item, flip) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        upper = flip.pop() if flip else False
        name = key.upper() if upper else key.lower()
        out[name] = item if key == "attrs" else recased(item, flip)
    return out


class TestWriteThenRead:
    @PROPERTY
    @given(messages)
    def test_message_round_trip(self, msg: Any) -> None:
        raw = dump_message(msg)
        assert parse_message(raw) == msg
        assert parse_message(to_json(msg)) == msg
        assert dump_message(parse_message(raw)) == raw

    @PROPERTY
    @given(envelopes)
    def test_frame_round_trip(self, env: Envelope) -> None:
        raw = dump_frame(env)
        assert parse_frame(raw) == env
        assert parse_any(raw) == env

    @PROPERTY
    @given(unit_configs, node_configs)
    def test_fragment_round_trip(self, config: Any, node: Any) -> None:
        assert parse_unit_config(dump_message(config)) == config
        assert parse_node_config(dump_message(node)) == node

    @PROPERTY
    @given(messages, st.lists(st.booleans(), max_size=64))
    def test_field_names_in_any_case(self, msg: Any, flip: list[bool]) -> None:
        obj = recased(to_json(msg), flip)
        message_type = msg.MESSAGE_TYPE
        obj.pop("messagetype", None)
        obj.pop("MESSAGETYPE", None)
        assert parse_message(obj, message_type=message_type) == msg


class TestAnyInput:
    @PROPERTY
    @given(st.binary(max_size=256))
    def test_any_bytes(self, raw: bytes) -> None:
        try:
            parse_any(raw)
        except ProtocolError as exc:
            assert_clean_refusal(exc)

    @PROPERTY
    @given(json_values)
    def test_any_json_value(self, value: Any) -> None:
        for attempt in (parse_any, parse_message, parse_frame, parse_unit_config):
            try:
                attempt(value)
            except ProtocolError as exc:
                assert_clean_refusal(exc)
        try:
            text = orjson.dumps(value)
        except orjson.JSONEncodeError:
            return
        try:
            parse_any(text)
        except ProtocolError as exc:
            assert_clean_refusal(exc)

    @PROPERTY
    @given(messages, st.data())
    def test_valid_message_with_one_value_changed(self, msg: Any, data: st.DataObject) -> None:
        obj = to_json(msg)
        where = data.draw(st.sampled_from(list(locations(obj))))
        delete = data.draw(st.booleans())
        new = data.draw(json_values)
        mutated = replaced(obj, where, new, delete=delete)
        try:
            parse_message(mutated)
        except ProtocolError as exc:
            assert_clean_refusal(exc)

    @pytest.mark.parametrize("hint", [None, "desiredStatus", "unitConfig", "nodeConfig"])
    def test_every_type_hint_on_junk(self, hint: str | None) -> None:
        for junk in (b"", b"[]", b"null", b"7", b'{"header": 1}', b'{"data": {}}'):
            with pytest.raises(ProtocolError) as info:
                parse_any(junk, message_type=hint)
            assert_clean_refusal(info.value)

    def test_empty_object_is_an_empty_desired_status_only_when_told(self) -> None:
        assert parse_any(b"{}", message_type="desiredStatus") == DesiredStatus()
        with pytest.raises(ProtocolError) as info:
            parse_any(b"{}")
        assert (info.value.path, info.value.reason) == ("$.messageType", "missing required field")
