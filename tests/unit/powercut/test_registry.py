"""The crash-point registry is complete, and the power-cut matrix skips none of it.

Every `crashpoint(...)` call in the product is found in the source and its name resolved; a name
the registry lacks fails here, as does a registered point no call passes or the matrix skips.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import aoscore_py
import statemachine
from aoscore_py.cm.updatemanager.handler import MACHINE
from aoscore_py.powercut.matrix import CASES
from aoscore_py.powercut.registry import ALL_POINTS, REGISTRY, machine_points
from statemachine import UPDATE_CYCLE

# The machine passes a point named after each phase it commits (`committed_point`); the
# registry lists those through `machine_points`.
MACHINE_MODULE = "statemachine.machine"
MACHINE_POINT = "<committed_point(machine, phase)>"


def _module_name(path: Path, package_root: Path) -> str:
    parts = path.relative_to(package_root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def crashpoint_calls() -> list[tuple[str, int, str | None]]:
    """(module, line, resolved name; MACHINE_POINT when it is the machine's per-phase point;
    None when it is computed some other way) of every call."""
    out = []
    for package in (aoscore_py, statemachine):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            module_name = _module_name(path, root)
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and _called(node) == "crashpoint"):
                    continue
                if not node.args:
                    continue
                out.append((module_name, node.lineno, _resolve(module_name, node.args[0])))
    return out


def _called(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _resolve(module_name: str, arg: ast.expr) -> str | None:
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.Call) and _called(arg) == "committed_point":
        return MACHINE_POINT
    if isinstance(arg, ast.Name | ast.Attribute):
        module = importlib.import_module(module_name)
        value = eval(compile(ast.Expression(arg), module_name, "eval"), vars(module))
        return value if isinstance(value, str) else None
    return None


CALLS = crashpoint_calls()


def test_the_scan_finds_the_calls() -> None:
    modules = {m for m, _, _ in CALLS}
    assert {
        "aoscore_py.cm.updatemanager.handler",
        "aoscore_py.cm.imagemanager.manager",
        "aoscore_py.blobs.download",
        "aoscore_py.cm.launcher.launcher",
        "aoscore_py.sm.manager",
        MACHINE_MODULE,
    } <= modules


@pytest.mark.parametrize(("module", "line", "name"), CALLS, ids=lambda v: str(v))
def test_every_crashpoint_call_names_a_registered_point(
    module: str, line: int, name: str | None
) -> None:
    assert name is not None, (
        f"{module}:{line}: crashpoint() with a computed name; use a constant from the "
        "component's crashpoints.py"
    )
    if name == MACHINE_POINT:
        assert module == MACHINE_MODULE, f"{module}:{line}: only the machine names its moves"
        return
    assert name in ALL_POINTS, f"{module}:{line}: {name!r} is not in powercut/registry.py"


def test_every_registered_point_is_passed_somewhere() -> None:
    called = {name for _, _, name in CALLS}
    if MACHINE_POINT in called:
        called |= set(machine_points(MACHINE, UPDATE_CYCLE))
    assert set(ALL_POINTS) - called == set()


def test_every_registered_point_has_a_row_in_the_matrix() -> None:
    rows = {case.point for case in CASES}
    assert [p for p in ALL_POINTS if p not in rows] == []
    assert len(set(ALL_POINTS)) == len(ALL_POINTS), "a point is registered twice"


def test_the_matrix_names_only_registered_points() -> None:
    """Its tables of arrivals, scenarios and faults follow the registry: a point renamed or
    dropped by a component leaves no stale row or scenario behind."""
    from aoscore_py.powercut import matrix

    named = {*matrix.ARRIVALS, *matrix.UPGRADE_POINTS, *matrix.SPOILED_POINTS}
    named |= set(matrix.FAULTS) | set(matrix.FAULTS.values())
    assert named - set(ALL_POINTS) == set()
    assert {case.point for case in CASES} == set(ALL_POINTS)
    assert set(REGISTRY[MACHINE]) == set(machine_points(MACHINE, UPDATE_CYCLE))
