"""Server-side TLS and the gRPC credentials, with real handshakes on loopback and certificates
from the unit PKI: a node of the unit is let in, a client without a certificate or with one
from another CA is not, and a file that is missing or not PEM is a ConfigError naming it."""

from __future__ import annotations

import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio
import httpx
import pytest

from aoscore_py.errors import ConfigError
from aoscore_py.iam.tls import (
    TlsFiles,
    check_insecure_host,
    grpc_channel_credentials,
    grpc_peer_name,
    grpc_server_credentials,
    is_loopback,
    mutual_server_context,
    server_context,
    unit_client_context,
)
from aoscore_py.iam.unitpki import UnitPki, init_unit_pki

from ..loopback import BODY, serve

# What a refused handshake looks like to httpx: with TLS 1.3 the client's handshake completes
# before the server checks its certificate, so the refusal may arrive as the first read fails.
# httpcore passes an alert read after the handshake on as the ssl module raised it.
REFUSED = (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> UnitPki:
    return init_unit_pki(tmp_path_factory.mktemp("unit"), nodes=("node-1",))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> UnitPki:
    """Another unit's PKI: same names, another CA."""
    return init_unit_pki(tmp_path_factory.mktemp("other"), nodes=("node-1",))


def trusting_only(ca: Path) -> ssl.SSLContext:
    """A client that trusts `ca` and presents no certificate."""
    return ssl.create_default_context(cafile=str(ca))


async def get(url: str, tls: ssl.SSLContext) -> bytes:
    async with httpx.AsyncClient(verify=tls, trust_env=False) as http:
        response = await http.get(url)
        response.raise_for_status()
        return response.content


class TestMutualTls:
    async def test_a_node_of_the_unit_is_let_in(self, pki: UnitPki) -> None:
        with serve(mutual_server_context(pki.cm), host="localhost") as url:
            assert await get(url, unit_client_context(pki.node("node-1"))) == BODY

    async def test_a_client_without_a_certificate_is_refused(self, pki: UnitPki) -> None:
        with serve(mutual_server_context(pki.cm), host="localhost") as url, pytest.raises(REFUSED):
            await get(url, trusting_only(pki.ca))

    async def test_a_certificate_from_another_ca_is_refused(
        self, pki: UnitPki, stranger: UnitPki
    ) -> None:
        foreign = TlsFiles(pki.ca, stranger.node("node-1").cert, stranger.node("node-1").key)
        with serve(mutual_server_context(pki.cm), host="localhost") as url, pytest.raises(REFUSED):
            await get(url, unit_client_context(foreign))

    async def test_the_server_asks_for_a_certificate(self, pki: UnitPki) -> None:
        assert mutual_server_context(pki.cm).verify_mode == ssl.CERT_REQUIRED
        assert server_context(pki.cm.cert, pki.cm.key).verify_mode == ssl.CERT_NONE


class TestWithoutClientAuth:
    async def test_any_client_trusting_the_ca_is_served(self, pki: UnitPki) -> None:
        with serve(server_context(pki.cm.cert, pki.cm.key), host="127.0.0.1") as url:
            assert await get(url, trusting_only(pki.ca)) == BODY

    async def test_the_units_client_trusts_the_units_ca_only(
        self, pki: UnitPki, stranger: UnitPki
    ) -> None:
        """A server with another CA's certificate is no CM of this unit, whatever its name."""
        foreign = server_context(stranger.cm.cert, stranger.cm.key)
        with (
            serve(foreign, host="localhost") as url,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            await get(url, unit_client_context(pki.node("node-1")))


# -- gRPC ------------------------------------------------------------------------------------


async def _who(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return (grpc_peer_name(context) or "-").encode()


@pytest.fixture
async def grpc_port(pki: UnitPki) -> AsyncIterator[int]:
    """A gRPC server with the CM's credentials and one raw-bytes method that names the peer."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(_who)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {"Who": handler})])
    port = server.add_secure_port("127.0.0.1:0", grpc_server_credentials(*pki.cm))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def call_who(port: int, credentials: grpc.ChannelCredentials, target: str) -> bytes:
    async with grpc.aio.secure_channel(f"{target}:{port}", credentials) as channel:
        return await channel.unary_unary("/t.T/Who")(b"", timeout=10)


class TestGrpc:
    @pytest.mark.parametrize("target", ["localhost", "127.0.0.1"])
    async def test_a_node_is_let_in_and_known_by_name(
        self, pki: UnitPki, grpc_port: int, target: str
    ) -> None:
        credentials = grpc_channel_credentials(*pki.node("node-1"))
        assert await call_who(grpc_port, credentials, target) == b"node-1"

    async def test_a_client_without_a_certificate_is_refused(
        self, pki: UnitPki, grpc_port: int
    ) -> None:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_who(grpc_port, credentials, "localhost")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_a_certificate_from_another_ca_is_refused(
        self, pki: UnitPki, stranger: UnitPki, grpc_port: int
    ) -> None:
        node = stranger.node("node-1")
        credentials = grpc_channel_credentials(pki.ca, node.cert, node.key)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_who(grpc_port, credentials, "localhost")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

    async def test_a_cm_of_another_unit_is_refused(
        self, pki: UnitPki, stranger: UnitPki, grpc_port: int
    ) -> None:
        node = stranger.node("node-1")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call_who(grpc_port, grpc_channel_credentials(*node), "localhost")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


# -- bad files -------------------------------------------------------------------------------


BUILDERS = {
    "server_context": lambda f: server_context(f.cert, f.key, client_ca=f.ca),
    "unit_client_context": unit_client_context,
    "grpc_server_credentials": lambda f: grpc_server_credentials(*f),
    "grpc_channel_credentials": lambda f: grpc_channel_credentials(*f),
}


class TestBadFiles:
    @pytest.mark.parametrize("builder", BUILDERS)
    @pytest.mark.parametrize("which", ["ca", "cert", "key"])
    def test_a_missing_file_is_named(
        self, pki: UnitPki, tmp_path: Path, builder: str, which: str
    ) -> None:
        files = pki.node("node-1")._replace(**{which: tmp_path / "missing.pem"})
        with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'missing.pem'} is missing")):
            BUILDERS[builder](files)

    @pytest.mark.parametrize("builder", BUILDERS)
    @pytest.mark.parametrize("which", ["ca", "cert", "key"])
    def test_a_file_that_is_not_pem_is_named(
        self, pki: UnitPki, tmp_path: Path, builder: str, which: str
    ) -> None:
        junk = tmp_path / "junk.pem"
        junk.write_text("not PEM at all\n")
        files = pki.node("node-1")._replace(**{which: junk})
        with pytest.raises(ConfigError, match=re.escape(f"{junk} is not PEM")):
            BUILDERS[builder](files)

    @pytest.mark.parametrize("builder", BUILDERS)
    def test_a_key_of_another_certificate_is_named(self, pki: UnitPki, builder: str) -> None:
        files = pki.node("node-1")._replace(key=pki.cm.key)
        with pytest.raises(ConfigError, match=re.escape(f"{pki.cm.key} does not belong")):
            BUILDERS[builder](files)

    def test_a_broken_certificate_is_named(self, pki: UnitPki, tmp_path: Path) -> None:
        broken = tmp_path / "broken.pem"
        broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        with pytest.raises(ConfigError, match=re.escape(f"{broken}: bad PEM certificate")):
            grpc_server_credentials(pki.ca, broken, pki.cm.key)


class TestPlaintextRule:
    @pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]"])
    def test_loopback_addresses(self, host: str) -> None:
        assert is_loopback(host)
        check_insecure_host(host, "test")

    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "cm.local", "localhost.evil"])
    def test_anything_else_is_refused_by_name(self, host: str) -> None:
        assert not is_loopback(host)
        with pytest.raises(ConfigError, match=re.escape(f"{host!r}")):
            check_insecure_host(host, "--sm-listen")
