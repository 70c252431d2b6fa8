"""The crash-point registry is complete, and the power-cut matrix skips none of it.

Every `crashpoint(...)` call in the product is found in the source and its name resolved; a name
the registry lacks fails here, as does a registered point no call passes or the matrix skips.
Each row arms a process that can reach its point: the SM's points an SM, every other point the
agent (the CM) at least once, and no row a process whose code never calls the point (its
modules, as `aoscore agent` or `aoscore sm` imports them, hold no call of it).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import aoscore_py
import statemachine
from aoscore_py.cm.updatemanager.handler import MACHINE
from aoscore_py.powercut.matrix import CASES, CM, owner
from aoscore_py.powercut.registry import ALL_POINTS, REGISTRY, machine_points
from aoscore_py.powercut.scenarios import NODES
from statemachine import UPDATE_CYCLE

# The machine passes a point named after each phase it commits (`committed_point`); the
# registry lists those through `machine_points`.
MACHINE_MODULE = "statemachine.machine"
MACHINE_POINT = "<committed_point(machine, phase)>"
MACHINE_OWNER = "aoscore_py.cm.updatemanager.handler"  # runs the machine named MACHINE


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

    named = {*matrix.ARRIVALS, *matrix.SM_ARRIVALS, *matrix.UPGRADE_POINTS}
    named |= {*matrix.UNIT_CONFIG_POINTS, *matrix.SPOILED_POINTS}
    named |= set(matrix.FAULTS) | set(matrix.FAULTS.values())
    assert named - set(ALL_POINTS) == set()
    assert {case.point for case in CASES} == set(ALL_POINTS)
    assert set(REGISTRY[MACHINE]) == set(machine_points(MACHINE, UPDATE_CYCLE))


# --- which process each row kills -----------------------------------------------------------

ROOTS = {package.__name__: Path(package.__file__).parent for package in (aoscore_py, statemachine)}
MAINS = {CM: "aoscore_py.agent", "sm": "aoscore_py.sm.process"}
"""What runs in each process: the agent's module, the SM's (`aoscore sm`)."""


def _source(module: str) -> Path | None:
    head, *rest = module.split(".")
    root = ROOTS.get(head)
    if root is None:
        return None
    path = root.joinpath(*rest)
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _imports(module: str) -> set[str]:
    """The product modules `module` imports, at its top or inside a function."""
    path = _source(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: `..x` from a.b.c is a.x
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join([*parts, node.module] if node.module else parts)
            else:
                base = node.module or ""
            out |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in out if _source(m) is not None}


def import_closure(module: str) -> set[str]:
    """Every product module a process started at `module` may load (with their packages)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += _imports(current)
    return seen


CLOSURES = {name: import_closure(main) for name, main in MAINS.items()}


def _callers(point: str) -> set[str]:
    """The modules whose `crashpoint()` calls name `point`; for the update cycle's points, the
    module that runs that machine (the machine's own module passes every machine's points)."""
    if point in machine_points(MACHINE, UPDATE_CYCLE):
        return {MACHINE_OWNER}
    return {m for m, _, name in CALLS if name == point}


def test_the_sm_and_the_agent_load_apart() -> None:
    """The premise of the checks below: the agent loads no SM module, the SM none of the
    CM's components (only their interfaces)."""
    assert not {m for m in CLOSURES[CM] if m.startswith("aoscore_py.sm")}
    loaded = {m for m in CLOSURES["sm"] if m.startswith("aoscore_py.cm.")}
    assert all(m.endswith(".interfaces") or m.count(".") == 2 for m in loaded), loaded


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.row)
def test_every_row_arms_a_process_that_calls_its_point(case) -> None:
    assert case.process == CM or case.process in NODES, case
    kind = CM if case.process == CM else "sm"
    assert _callers(case.point) & CLOSURES[kind], (
        f"{case.row}: {case.process} never calls {case.point} (called in "
        f"{sorted(_callers(case.point))})"
    )


def test_the_sm_points_kill_an_sm_and_every_other_point_kills_the_agent() -> None:
    for point in ALL_POINTS:
        processes = {c.process for c in CASES if c.point == point}
        if point in REGISTRY["sm"]:
            assert processes == {owner(point)} and CM not in processes, (point, processes)
        else:
            assert CM in processes, f"{point} has no row that kills the agent"
