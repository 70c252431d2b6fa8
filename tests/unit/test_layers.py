"""The dependency rules of ARCHITECTURE.md, checked on the source: `cm/` and `sm/` never import
each other (only the `nodes` contract), and the update manager's heart imports no engine, socket,
HTTP or database library, so it stays testable in milliseconds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import aoscore_py

ROOT = Path(aoscore_py.__file__).parent


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            out.add(name)
            out |= {f"{name}.{alias.name}" for alias in node.names}
    return out


def files(sub: str) -> list[Path]:
    return sorted((ROOT / sub).rglob("*.py"))


@pytest.mark.parametrize("path", files("sm"), ids=lambda p: p.name)
def test_the_service_manager_does_not_import_the_cm(path: Path) -> None:
    assert [m for m in imports_of(path) if m.startswith("aoscore_py.cm")] == []


@pytest.mark.parametrize("path", files("cm"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_cm_does_not_import_the_service_manager(path: Path) -> None:
    assert [m for m in imports_of(path) if m.startswith("aoscore_py.sm")] == []


@pytest.mark.parametrize("path", files("cm/updatemanager"), ids=lambda p: p.name)
def test_the_update_manager_imports_no_engine_socket_http_or_database(path: Path) -> None:
    banned = ("docker", "websockets", "httpx", "peewee", "sqlite3")
    found = [m for m in imports_of(path) if m.split(".")[0] in banned]
    assert found == []


def test_the_scan_sees_relative_imports() -> None:
    found = imports_of(ROOT / "cm" / "updatemanager" / "handler.py")
    assert "aoscore_py.cm.updatemanager.compare" in found
    assert "aoscore_py.protocol" in found
