"""Blob signatures made by an outside signer (the OpenSSL command line): every case as it expects.

The vectors are a copy of the shared folder kept in the repository,
`fixtures/conformance/signatures` (its INDEX.md lists them), so CI runs every case;
AOSCORE_SIGNATURE_VECTORS_DIR points the tests at another copy. A missing folder is a failure,
never a skip, and so is a vector without a case here or a case without its vector.

Each case is read the way the agent reads it: the desired status and the blob URLs through the
protocol parser, the unit's CA as the PEM it is given with `--ca`, and the blob's bytes hashed
by the downloader as they arrive. A refusal must come for the reason the vector is about: a
chain that fails to verify must not pass for a signature that does not verify, and the reverse.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from aoscore_py.blobs.download import Downloader
from aoscore_py.blobs.store import BlobStore
from aoscore_py.crypto.signing import (
    ChainVerifier,
    SignatureError,
    hash_names_for,
    load_pem_certificates,
)
from aoscore_py.protocol import BlobUrlInfo, BlobUrls, DesiredStatus, parse_message

VECTORS_DIR = Path(
    os.environ.get("AOSCORE_SIGNATURE_VECTORS_DIR")
    or Path(__file__).resolve().parents[3] / "fixtures" / "conformance" / "signatures"
)
MISSING = (
    f"signature vectors not found at {VECTORS_DIR} "
    "(a copy of ../shared/conformance/signatures; AOSCORE_SIGNATURE_VECTORS_DIR names another)"
)

# Every vector, with why it must be refused (a part of the verifier's message), None to accept.
REFUSAL: dict[str, str | None] = {
    "01-rsa-sha256-pkcs1": None,
    "02-rsa-sha384-pss": None,
    "03-rsa-sha512-pkcs1": None,
    "04-ecdsa-p256-sha256": None,
    "05-wrong-signature": "does not verify with certificate CN=RSA blob signer",
    "06-untrusted-root": "certificate chain chain-06-untrusted-root does not verify at",
    "07-after-expiry": "does not verify at 2028-06-01T00:00:00Z: validation failed: cert is not "
    "valid at validation time",
    "08-before-validity": "does not verify at 2020-01-01T00:00:00Z: validation failed: cert is "
    "not valid at validation time",
    "09-not-a-code-signer": "its extended key usage (serverAuth) does not allow codeSigning",
    "10-missing-intermediate": "is not in the desired status",
    "11-wrong-algorithm-family": "holds an RSA key, but signature algorithm 'ECDSA/SHA256'",
    "12-pss-named-as-pkcs1": "does not verify with certificate CN=RSA blob signer",
}

_INDEX_ROW = re.compile(r"^\|\s*(\d\d-[a-z0-9-]+)\s*\|\s*(accept|refuse)\s*\|", re.MULTILINE)


def vector_names() -> list[str]:
    """The vectors' names, for parametrize; one failing "missing" case when the folder is."""
    if not VECTORS_DIR.is_dir():
        return ["missing"]
    return sorted(p.stem for p in VECTORS_DIR.glob("*.json")) or ["missing"]


@dataclass(frozen=True)
class Vector:
    """One case, parsed as the agent parses what it receives."""

    name: str
    expect: str
    roots: list[Any]
    desired: DesiredStatus
    info: BlobUrlInfo
    blob: bytes

    def verifier(self) -> ChainVerifier:
        return ChainVerifier(self.roots, self.desired.certificates, self.desired.certificate_chains)


def load(name: str) -> Vector:
    if not VECTORS_DIR.is_dir():
        pytest.fail(MISSING)
    raw = orjson.loads((VECTORS_DIR / f"{name}.json").read_bytes())
    desired = parse_message(orjson.dumps(raw["desiredStatus"]))
    urls = parse_message(orjson.dumps(raw["blobUrls"]))
    assert isinstance(desired, DesiredStatus) and isinstance(urls, BlobUrls)
    (info,) = urls.items
    blob = base64.b64decode(raw["blob"], validate=True)
    # the vector itself: its bytes are the blob it announces
    assert info.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert info.size == len(blob)
    assert info.sign_info is not None, "every vector is signed"
    assert raw["expect"] in ("accept", "refuse")
    roots = load_pem_certificates(raw["unitTrustedCa"].encode())
    return Vector(name, raw["expect"], roots, desired, info, blob)


def hashes_of(v: Vector) -> dict[str, bytes]:
    return {n: hashlib.new(n, v.blob).digest() for n in hash_names_for(v.info.sign_info)}


class TestCoverage:
    def test_every_vector_in_the_folder_and_the_index_has_a_case(self) -> None:
        if not VECTORS_DIR.is_dir():
            pytest.fail(MISSING)
        files = {p.stem for p in VECTORS_DIR.glob("*.json")}
        index = dict(_INDEX_ROW.findall((VECTORS_DIR / "INDEX.md").read_text()))
        assert files == set(index), "INDEX.md and the folder list the same vectors"
        assert files == set(REFUSAL), "a case here for every vector, a vector for every case"

    @pytest.mark.parametrize("name", vector_names())
    def test_the_case_expects_what_the_vector_and_the_index_say(self, name: str) -> None:
        vector = load(name)
        index = dict(_INDEX_ROW.findall((VECTORS_DIR / "INDEX.md").read_text()))
        assert vector.expect == index[name]
        assert name in REFUSAL, f"vector {name} has no case in REFUSAL"
        assert (REFUSAL[name] is None) == (vector.expect == "accept")


@pytest.mark.parametrize("name", vector_names())
def test_the_verifier_does_what_the_vector_expects(name: str) -> None:
    vector = load(name)
    reason = REFUSAL.get(name, "no case for this vector")
    sign_info = vector.info.sign_info
    assert sign_info is not None
    if vector.expect == "accept":
        vector.verifier().verify(vector.info.digest, sign_info, hashes_of(vector))
        return
    with pytest.raises(SignatureError) as err:
        vector.verifier().verify(vector.info.digest, sign_info, hashes_of(vector))
    assert reason is not None and reason in err.value.message, err.value.message


@pytest.mark.parametrize("name", vector_names())
async def test_a_downloaded_blob_is_stored_only_when_the_vector_accepts(
    name: str, tmp_path: Path
) -> None:
    """The agent's path: the downloader hashes the bytes as they arrive (the hashes the
    algorithm names), hands them to the verifier, and commits the blob only if it passes."""
    vector = load(name)
    sign_info = vector.info.sign_info
    assert sign_info is not None
    store = BlobStore(tmp_path)
    verifier = vector.verifier()

    def verify(hashes: Mapping[str, bytes]) -> None:
        verifier.verify(vector.info.digest, sign_info, hashes)

    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=vector.blob))
    async with httpx.AsyncClient(transport=transport) as http:
        fetch = Downloader(http, store).fetch(vector.info, hash_names_for(sign_info), verify)
        if vector.expect == "accept":
            await fetch
            assert store.read(vector.info.digest) == vector.blob
            return
        with pytest.raises(SignatureError) as err:
            await fetch
    reason = REFUSAL.get(name)
    assert reason is not None and reason in err.value.message, err.value.message
    assert store.stat(vector.info.digest) is None
