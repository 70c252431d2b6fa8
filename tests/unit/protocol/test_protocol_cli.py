"""`aoscore protocol check`: one clean line per file, exit 0 only when all are valid."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from protocol_support import CONFORMANCE_DIR, conformance_params, read_conformance

from aoscore_py.cli.protocol import protocol
from aoscore_py.protocol import MAX_MESSAGE_BYTES

REPO = Path(__file__).resolve().parents[3]
PLACEHOLDER_DIGESTS = "cloud-to-unit-desiredStatus-toFromJSON.json"
"""The one AosCore file whose digests ("sha256:abcdef") break our rule; AosCore accepts them."""
GOOD_DIGEST = "sha256:" + "ab" * 32


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(protocol, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


def expected_type(name: str) -> tuple[list[str], str]:
    """Options and the `ok` type for a valid conformance file, from its name."""
    if name.startswith("fragment-unitConfig"):
        return ["--type", "unitConfig"], "unitConfig"
    if name == PLACEHOLDER_DIGESTS:
        return ["--type", "desiredStatus", "--lenient-digests"], "desiredStatus"
    return [], name.split("-")[3]


@pytest.mark.parametrize(
    "name", [n for n in conformance_params() if not str(n).startswith("invalid")]
)
def test_conformance_file_is_ok(name: str) -> None:
    read_conformance(name)
    options, kind = expected_type(name)
    code, out, err = run("check", *options, str(CONFORMANCE_DIR / name))
    assert (code, out, err) == (0, f"ok {kind}\n", "")


def test_placeholder_digests_need_the_lenient_flag() -> None:
    path = str(CONFORMANCE_DIR / PLACEHOLDER_DIGESTS)
    read_conformance(PLACEHOLDER_DIGESTS)
    code, out, err = run("check", "--type", "desiredStatus", path)
    assert (code, out) == (2, "")
    assert err == (
        f"{path}: $.items[0].indexDigest: invalid digest 'sha256:abcdef': "
        "sha256 needs 64 hex digits, got 6\n"
    )
    assert "--lenient-digests" in run("check", "--help")[1]


def test_invalid_conformance_file() -> None:
    read_conformance("invalid-nodeConfig-labelOverflow.json")
    path = str(CONFORMANCE_DIR / "invalid-nodeConfig-labelOverflow.json")
    code, out, err = run("check", "--type", "nodeConfig", path)
    assert (code, out) == (2, "")
    assert err == f"{path}: $.labels[0]: label too long (67 characters, limit 64)\n"
    code, _, err = run("check", path)
    assert (code, err) == (2, f"{path}: $.messageType: missing required field\n")


def test_many_files_all_checked(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_bytes(b'{"messageType":"ack"}')
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"messageType":"nack","retryAfter":"soon"}')
    code, out, err = run("check", str(bad), str(good), str(tmp_path / "missing.json"), str(good))
    assert code == 2
    assert out == "ok ack\nok ack\n"
    assert err.splitlines() == [
        f"{bad}: $.retryAfter: expected integer, got string",
        f"{tmp_path / 'missing.json'}: cannot read: No such file or directory",
    ]


def test_frame_prints_its_data_type(tmp_path: Path) -> None:
    frame = tmp_path / "frame.json"
    frame.write_bytes(
        b'{"header":{"version":7,"systemId":"u","txn":"t"},"data":{"messageType":"nack"}}'
    )
    assert run("check", str(frame)) == (0, "ok nack\n", "")


def header_frame(version: int, data: dict[str, object]) -> bytes:
    return orjson.dumps({"header": {"version": version, "systemId": "u", "txn": "t"}, "data": data})


@pytest.mark.parametrize(
    "data",
    [{"messageType": "desiredStatus"}, {"messageType": "somethingNewInV8"}],
    ids=["v7-body", "unknown-body"],
)
@pytest.mark.parametrize("version", [6, 8])
def test_frame_of_another_version(tmp_path: Path, version: int, data: dict[str, object]) -> None:
    frame = tmp_path / "frame.json"
    frame.write_bytes(header_frame(version, data))
    code, out, err = run("check", str(frame))
    assert (code, out) == (2, "")
    assert err == (
        f"{frame}: $.header.version: unsupported protocol version {version} (this unit speaks 7)\n"
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("sha256:" + "AB" * 32, "hex digits must be lowercase"),
        ("sha256:" + "ab" * 31, "sha256 needs 64 hex digits, got 62"),
        ("sha512:" + "ab" * 32, "sha512 needs 128 hex digits, got 64"),
        (
            "md5:" + "ab" * 16,
            "unsupported algorithm 'md5' (expected one of: sha256, sha384, sha512)",
        ),
        ("ab" * 32, "expected '<algorithm>:<hex>' with algorithm one of: sha256, sha384, sha512"),
        ("sha256:" + "xy" * 32, "not hex after the colon"),
    ],
    ids=["uppercase", "short", "sha512-short", "md5", "no-colon", "not-hex"],
)
def test_bad_digests(tmp_path: Path, value: str, reason: str) -> None:
    item = {"item": {"id": "i", "type": "service"}, "version": "1", "indexDigest": value}
    blob = {"digest": value, "urls": ["u"], "sha256": "00", "size": 1}
    cases = {
        "desired.json": (
            {"messageType": "desiredStatus", "items": [{**item, "indexDigest": GOOD_DIGEST}, item]},
            "$.data.items[1].indexDigest",
        ),
        "blobs.json": ({"messageType": "blobUrls", "items": [blob]}, "$.data.items[0].digest"),
        "request.json": (
            {"messageType": "requestBlobUrls", "digests": [GOOD_DIGEST, value]},
            "$.data.digests[1]",
        ),
    }
    for name, (data, where) in cases.items():
        path = tmp_path / name
        path.write_bytes(header_frame(7, data))
        code, out, err = run("check", str(path))
        assert (code, out) == (2, ""), name
        assert err == f"{path}: {where}: invalid digest {value!r}: {reason}\n"
        assert run("check", "--lenient-digests", str(path)) == (
            0,
            f"ok {data['messageType']}\n",
            "",
        )


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (random.Random(7).randbytes(4096), "not UTF-8"),
        (b'{"messageType": "\xc3\x28"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nesting too deep"),
        (b"\x00\x01 hello", None),
        (b"", None),
    ],
    ids=["random-bytes", "non-utf8", "deep-arrays", "binary-junk", "empty"],
)
def test_junk_files(tmp_path: Path, content: bytes, reason: str | None) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(content)
    code, out, err = run("check", str(junk))
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1
    assert err.startswith(f"{junk}: $: ")
    if reason is not None:
        assert err == f"{junk}: $: {reason}\n"
    else:
        assert err.startswith(f"{junk}: $: not valid JSON: ")


def test_file_over_the_limit(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    size = 17 * 1024 * 1024
    with big.open("wb") as handle:
        handle.truncate(size)
    code, out, err = run("check", str(big))
    assert (code, out) == (2, "")
    assert err == f"{big}: $: message too large ({size} bytes, limit {MAX_MESSAGE_BYTES})\n"


def test_directory_cannot_be_read(tmp_path: Path) -> None:
    code, _, err = run("check", str(tmp_path))
    assert (code, err) == (2, f"{tmp_path}: cannot read: Is a directory\n")


def test_usage_errors() -> None:
    code, _, err = run("check", "--type", "bogus", "x.json")
    assert code == 2
    assert "Invalid value for '--type'" in err
    code, _, err = run("check")
    assert code == 2
    assert "Missing argument" in err


def test_runs_as_the_aoscore_command(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_bytes(b'{"messageType":"unitStatus"}')
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff")
    command = [sys.executable, "-m", "aoscore_py", "protocol", "check", str(good), str(bad)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stdout == "ok unitStatus\n"
    assert result.stderr == f"{bad}: $: not UTF-8\n"
