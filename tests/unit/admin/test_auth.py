"""The admin token: made once, 0600, replaced when damaged; the header check."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from aoscore_py.admin.auth import TOKEN_FILE, authorized, load_or_create_token, valid_token
from aoscore_py.admin.listen import bind_unix_socket, parse_admin_listen
from aoscore_py.errors import ConfigError


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class TestToken:
    def test_made_on_first_start_private_and_kept(self, tmp_path: Path) -> None:
        token = load_or_create_token(tmp_path)
        assert valid_token(token)
        assert mode_of(tmp_path / TOKEN_FILE) == 0o600
        assert load_or_create_token(tmp_path) == token

    def test_a_widened_file_is_made_private_again(self, tmp_path: Path) -> None:
        token = load_or_create_token(tmp_path)
        os.chmod(tmp_path / TOKEN_FILE, 0o644)
        assert load_or_create_token(tmp_path) == token
        assert mode_of(tmp_path / TOKEN_FILE) == 0o600

    @pytest.mark.parametrize("content", ["", "short", "has spaces in it, not ours at all"])
    def test_a_damaged_file_is_replaced(self, tmp_path: Path, content: str) -> None:
        (tmp_path / TOKEN_FILE).write_text(content)
        token = load_or_create_token(tmp_path)
        assert valid_token(token) and token != content
        assert (tmp_path / TOKEN_FILE).read_text().strip() == token

    def test_each_unit_gets_its_own(self, tmp_path: Path) -> None:
        assert load_or_create_token(tmp_path / "a") != load_or_create_token(tmp_path / "b")


class TestAuthorized:
    TOKEN = "abcdefghijklmnopqrstuvwxyz0123456789"

    @pytest.mark.parametrize(
        "header",
        [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"  Bearer   {TOKEN}  "],
    )
    def test_the_token_as_bearer_passes(self, header: str) -> None:
        assert authorized(header, self.TOKEN)

    @pytest.mark.parametrize(
        "header",
        [
            None,
            "",
            "Bearer",
            "Bearer ",
            f"Basic {TOKEN}",
            f"Bearer {TOKEN}x",
            f"Bearer {TOKEN[:-1]}",
            TOKEN,
            "Bearer wrong-token-wrong-token-wrong",
        ],
    )
    def test_anything_else_is_refused(self, header: str | None) -> None:
        assert not authorized(header, self.TOKEN)


class TestListen:
    @pytest.mark.parametrize(
        ("address", "expected"),
        [
            ("127.0.0.1:8095", ("127.0.0.1", 8095)),
            ("127.0.0.2:0", ("127.0.0.2", 0)),
            ("localhost:1", ("localhost", 1)),
            ("[::1]:8095", ("::1", 8095)),
        ],
    )
    def test_loopback_addresses_are_taken(self, address: str, expected: tuple[str, int]) -> None:
        assert parse_admin_listen(address) == expected

    @pytest.mark.parametrize("address", ["0.0.0.0:8095", "10.1.2.3:80", "[::]:1", "example.com:1"])
    def test_other_hosts_are_refused_naming_why(self, address: str) -> None:
        with pytest.raises(ConfigError, match=r"loopback.*no TLS"):
            parse_admin_listen(address)

    @pytest.mark.parametrize("address", ["8095", "127.0.0.1", "127.0.0.1:x", "127.0.0.1:70000"])
    def test_malformed_addresses_are_refused(self, address: str) -> None:
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_admin_listen(address)

    def test_the_socket_is_private_and_replaces_a_stale_one(self, tmp_path: Path) -> None:
        path = tmp_path / "admin.sock"
        path.write_text("left by a killed agent")
        sock = bind_unix_socket(path)
        try:
            assert stat.S_ISSOCK(path.stat().st_mode)
            assert mode_of(path) == 0o600
            assert sorted(p.name for p in tmp_path.iterdir()) == ["admin.sock"]
        finally:
            sock.close()

    def test_a_path_too_long_for_a_socket_is_refused(self, tmp_path: Path) -> None:
        deep = tmp_path / ("d" * 120)
        deep.mkdir()
        with pytest.raises(ConfigError, match="longer than 107 bytes"):
            bind_unix_socket(deep / "admin.sock")
