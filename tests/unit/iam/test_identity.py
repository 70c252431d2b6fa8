"""The unit's identity: provisioned once with a token, kept, and made again (as a new unit)
only when it is lost and a token is given."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aoscore_py.errors import ConfigError, ProvisioningError
from aoscore_py.iam.identity import (
    check_answer,
    ensure_identity,
    identity_dir,
    load_identity,
    provisioning_url,
)

from .stubs import DISCOVERY_URL, StubCloud


@pytest.fixture
def cloud(tmp_path: Path) -> StubCloud:
    return StubCloud(tmp_path / "cloud")


async def _ensure(cloud: StubCloud, data_dir: Path, token: str | None):
    return await ensure_identity(
        data_dir, token=token, discovery_url=DISCOVERY_URL, transport=cloud.transport()
    )


class TestProvisioning:
    async def test_first_start_provisions_and_keeps_the_key_private(
        self, cloud: StubCloud, tmp_path: Path
    ) -> None:
        identity = await _ensure(cloud, tmp_path / "data", cloud.token())
        folder = identity_dir(tmp_path / "data")
        assert (folder / "key.pem").stat().st_mode & 0o777 == 0o600
        assert (folder / "system_id").read_text().strip() == identity.system_id
        assert cloud.registrar.is_unit(identity.system_id)
        key = serialization.load_pem_private_key((folder / "key.pem").read_bytes(), None)
        sent = x509.load_pem_x509_csr(cloud.requests[0][1]["csr"].encode())
        assert sent.public_key() == key.public_key()  # the CSR carries the public key only
        assert b"PRIVATE" not in cloud.requests[0][1]["csr"].encode()

    async def test_later_starts_need_no_token(self, cloud: StubCloud, tmp_path: Path) -> None:
        first = await _ensure(cloud, tmp_path / "data", cloud.token())
        again = await ensure_identity(tmp_path / "data")
        assert again.system_id == first.system_id
        assert again.discovery_url == DISCOVERY_URL
        assert cloud.paths() == ["/provisioning"]

    async def test_a_token_left_in_the_environment_is_not_used_again(
        self, cloud: StubCloud, tmp_path: Path
    ) -> None:
        token = cloud.token()
        first = await _ensure(cloud, tmp_path / "data", token)
        again = await _ensure(cloud, tmp_path / "data", token)
        assert again.system_id == first.system_id and len(cloud.requests) == 1

    async def test_a_lost_identity_provisions_again_as_a_new_unit(
        self, cloud: StubCloud, tmp_path: Path
    ) -> None:
        first = await _ensure(cloud, tmp_path / "data", cloud.token())
        (identity_dir(tmp_path / "data") / "cert.pem").unlink()
        assert load_identity(tmp_path / "data") is None
        with pytest.raises(ConfigError, match="no identity"):
            await ensure_identity(tmp_path / "data", discovery_url=DISCOVERY_URL)
        second = await _ensure(cloud, tmp_path / "data", cloud.token())
        assert second.system_id != first.system_id

    async def test_a_key_that_is_not_the_certificates_is_a_lost_identity(
        self, cloud: StubCloud, tmp_path: Path
    ) -> None:
        await _ensure(cloud, tmp_path / "data", cloud.token())
        other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        (identity_dir(tmp_path / "data") / "key.pem").write_bytes(other)
        assert load_identity(tmp_path / "data") is None

    async def test_wrong_and_used_tokens_are_refused_clearly(
        self, cloud: StubCloud, tmp_path: Path
    ) -> None:
        with pytest.raises(ProvisioningError, match="not known"):
            await _ensure(cloud, tmp_path / "a", "wrong")
        token = cloud.token()
        await _ensure(cloud, tmp_path / "b", token)
        with pytest.raises(ProvisioningError, match="used already"):
            await _ensure(cloud, tmp_path / "c", token)

    async def test_a_refused_attempt_keeps_its_key_for_the_next(
        self, cloud: StubCloud, tmp_path: Path
    ) -> None:
        with pytest.raises(ProvisioningError):
            await _ensure(cloud, tmp_path / "data", "wrong")
        key = (identity_dir(tmp_path / "data") / "key.pem").read_bytes()
        await _ensure(cloud, tmp_path / "data", cloud.token())
        assert (identity_dir(tmp_path / "data") / "key.pem").read_bytes() == key

    async def test_an_unreachable_cloud_is_a_link_error(self, tmp_path: Path) -> None:
        from aoscore_py.errors import LinkError

        def refuse(request: httpx.Request) -> httpx.Response:
            raise httpx.ConnectError("connection refused", request=request)

        with pytest.raises(LinkError, match="cannot reach"):
            await ensure_identity(
                tmp_path,
                token="t",
                discovery_url=DISCOVERY_URL,
                transport=httpx.MockTransport(refuse),
            )


class TestAnswer:
    def test_a_certificate_for_another_key_is_refused(self, cloud: StubCloud) -> None:
        ours, theirs = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
        from aoscore_py.iam.identity import make_csr

        unit = cloud.registrar.provision(cloud.token(), make_csr(theirs))
        answer = {
            "systemId": unit.system_id,
            "certificate": unit.certificate_pem,
            "ca": unit.ca_pem,
        }
        with pytest.raises(ProvisioningError, match="not for this unit's key"):
            check_answer(answer, ours)
        with pytest.raises(ProvisioningError, match="does not name"):
            check_answer({**answer, "systemId": "unit-other"}, theirs)
        with pytest.raises(ProvisioningError, match="lacks"):
            check_answer({"systemId": unit.system_id}, theirs)

    def test_the_provisioning_endpoint_is_beside_discovery(self) -> None:
        assert provisioning_url("https://c:1/discovery") == "https://c:1/provisioning"
        assert provisioning_url("https://c/api/v7/discovery") == "https://c/api/v7/provisioning"
