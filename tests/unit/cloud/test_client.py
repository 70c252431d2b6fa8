"""The operator client refuses a request larger than the cloud takes, with a message and
without sending it (before, the cloud closed the connection with 1009 and the operator read
"cannot reach the reference cloud")."""

from __future__ import annotations

import pytest

from aoscore_py.cloud.client import operate
from aoscore_py.errors import LinkError
from aoscore_py.protocol import MAX_MESSAGE_BYTES


async def test_an_oversized_request_is_refused_before_it_is_sent() -> None:
    request = {"op": "push", "desiredStatus": "x" * MAX_MESSAGE_BYTES}
    with pytest.raises(LinkError) as raised:
        await operate("http://127.0.0.1:9", request, timeout_s=1)
    assert "more than the cloud takes" in raised.value.message
    assert "nothing was sent" in raised.value.message
