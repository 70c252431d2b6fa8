"""The SM's link without sockets: what an address may be, reconnect delays, how an ended stream
reads, which error a failed GetBlobsInfos is."""

from __future__ import annotations

import random

import grpc
import pytest

from aoscore_py.backoff import Backoff
from aoscore_py.errors import AosCode, BlobError, ConfigError
from aoscore_py.nodes import wire
from aoscore_py.sm.link import (
    CHANNEL_OPTIONS,
    Reconnect,
    SmLink,
    blob_error,
    describe_end,
    parse_target,
)

from .node_stubs import digest


class TestTarget:
    @pytest.mark.parametrize(
        ("address", "host", "port"),
        [("127.0.0.1:8090", "127.0.0.1", 8090), ("[::1]:1", "[::1]", 1), ("cm:65535", "cm", 65535)],
    )
    def test_host_and_port(self, address: str, host: str, port: int) -> None:
        assert parse_target(address) == (host, port)

    @pytest.mark.parametrize("address", ["cm", "cm:", ":80", "cm:0", "cm:65536", "cm:http"])
    def test_anything_else_is_a_config_error(self, address: str) -> None:
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_target(address)

    def test_keepalive_is_the_documented_one(self) -> None:
        options = dict(CHANNEL_OPTIONS)
        assert options["grpc.keepalive_time_ms"] == 20_000
        assert options["grpc.keepalive_timeout_ms"] == 10_000
        assert options["grpc.keepalive_permit_without_calls"] == 1
        assert options["grpc.http2.max_pings_without_data"] == 0  # pings go on while idle


class TestReconnect:
    def schedule(self) -> Reconnect:
        return Reconnect(Backoff(1.0, 2.0, cap=15.0, jitter=0.0, rng=random.Random(1)), 30.0)

    def test_failed_attempts_back_off_to_the_cap(self) -> None:
        reconnect = self.schedule()
        assert [reconnect.delay(None) for _ in range(6)] == [1, 2, 4, 8, 15, 15]

    def test_a_stream_that_dropped_at_once_does_not_reset_the_backoff(self) -> None:
        reconnect = self.schedule()
        reconnect.delay(None)
        reconnect.delay(None)
        assert reconnect.delay(0.2) == 4  # a CM that takes each stream and drops it

    def test_a_stream_that_held_starts_again_from_the_beginning(self) -> None:
        reconnect = self.schedule()
        for _ in range(4):
            reconnect.delay(None)
        assert reconnect.delay(30.0) == 1


class TestStreamEnd:
    @pytest.mark.parametrize(
        ("code", "details", "level", "event", "says"),
        [
            (
                grpc.StatusCode.ABORTED,
                "replaced by a newer stream of node node-1 from ipv4:127.0.0.1:5",
                "warning",
                "link.replaced",
                "two SMs with one node id",
            ),
            (grpc.StatusCode.ABORTED, "stream ended", "warning", "link.aborted", "stream ended"),
            (
                grpc.StatusCode.INVALID_ARGUMENT,
                "SMInfo.node_id: is empty",
                "error",
                "link.refused",
                "refused this SM's messages: SMInfo.node_id",
            ),
            (
                grpc.StatusCode.PERMISSION_DENIED,
                "SMInfo.node_id 'n1' is not the client certificate's common name 'n2'",
                "error",
                "link.refused",
                "check --node-id",
            ),
            (grpc.StatusCode.UNAVAILABLE, "the CM is stopping", "info", "link.cm_stopping", ""),
            (
                grpc.StatusCode.UNAVAILABLE,
                "failed to connect to all addresses; Ssl handshake failed",
                "error",
                "link.tls_failed",
                "--ca/--cert/--key",
            ),
            (
                grpc.StatusCode.UNAVAILABLE,
                "failed to connect to all addresses; Connection refused",
                "warning",
                "link.unreachable",
                "Connection refused",
            ),
            (grpc.StatusCode.OK, "", "info", "link.closed", "the CM ended the stream"),
            (grpc.StatusCode.INTERNAL, "boom", "warning", "link.down", "INTERNAL"),
        ],
    )
    def test_each_end_reads_clearly(
        self, code: grpc.StatusCode, details: str, level: str, event: str, says: str
    ) -> None:
        end = describe_end(code, details)
        assert (end.level, end.event) == (level, event)
        assert says in end.why

    def test_an_end_without_a_status_names_the_error(self) -> None:
        end = describe_end(None, "", "RuntimeError: the engine went away")
        assert end.event == "link.down" and "the engine went away" in end.why


class TestBlobError:
    @pytest.mark.parametrize(
        ("code", "aos_code"),
        [
            (grpc.StatusCode.NOT_FOUND, AosCode.NOT_FOUND),
            (grpc.StatusCode.INVALID_ARGUMENT, AosCode.INVALID_ARGUMENT),
            (grpc.StatusCode.UNAVAILABLE, AosCode.FAILED),
            (None, AosCode.FAILED),
        ],
    )
    def test_codes(self, code: grpc.StatusCode | None, aos_code: AosCode) -> None:
        error = blob_error(code, "blob sha256:ab is not in the store", ["sha256:ab"])
        assert isinstance(error, BlobError) and error.code == aos_code
        assert "sha256:ab" in error.message

    async def test_no_stream_no_urls(self) -> None:
        link = SmLink("127.0.0.1:9")
        with pytest.raises(BlobError, match="not connected") as caught:
            await link.get_blobs_infos([digest("a")])
        assert caught.value.code == AosCode.FAILED

    def test_nothing_is_queued_without_a_stream(self) -> None:
        assert not SmLink("127.0.0.1:9").send(wire.node_instances_status([]))
