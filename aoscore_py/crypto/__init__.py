"""Blob signatures and the reference cloud's test PKI.

`signing` is pure logic: parse an algorithm, sign a precomputed hash, verify a signature with a
named certificate chain at its trusted timestamp. `pki` creates and loads the test PKI that the
reference cloud signs with.
"""

from aoscore_py.crypto.pki import Pki, init_pki, load_pki
from aoscore_py.crypto.signing import (
    ChainVerifier,
    SignAlg,
    SignatureError,
    fingerprint,
    hash_names_for,
    load_pem_certificates,
    parse_alg,
    sign_digest,
)

__all__ = [
    "ChainVerifier",
    "Pki",
    "SignAlg",
    "SignatureError",
    "fingerprint",
    "hash_names_for",
    "init_pki",
    "load_pem_certificates",
    "load_pki",
    "parse_alg",
    "sign_digest",
]
