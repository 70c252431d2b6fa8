"""What `aoscore sm` checks of its configuration before it touches anything."""

from __future__ import annotations

import pytest

from aoscore_py.errors import ConfigError
from aoscore_py.sm.process import SmConfig

from .node_stubs import NODE


class TestConfig:
    def test_plaintext_only_on_loopback(self, tmp_path) -> None:
        SmConfig(NODE, "127.0.0.1:1", tmp_path, insecure=True).check()
        SmConfig(NODE, "localhost:1", tmp_path, insecure=True).check()
        with pytest.raises(ConfigError, match=r"--cm 192\.0\.2\.1:1.*loopback"):
            SmConfig(NODE, "192.0.2.1:1", tmp_path, insecure=True).check()

    def test_tls_files_are_needed_without_insecure(self, tmp_path) -> None:
        with pytest.raises(ConfigError, match="--ca/--cert/--key"):
            SmConfig(NODE, "cm:1", tmp_path).check()
