"""The house rules, read from the source (AST, nothing imported): floors, circles, privacy, size.

Each module lives on a floor and imports only from its own floor or the floors below. The table
is the rule; README's layout table and ARCHITECTURE draw the same picture.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("adaptive", "agents", "envs", "monitor")

# floor, name, module prefixes. A module may import from its own floor and every floor below.
FLOORS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "contract", ("adaptive.protocol", "adaptive.errors", "adaptive._moved", "adaptive.data",
                     "adaptive.schemas")),
    (1, "monitor", ("monitor",)),
    (2, "model", ("adaptive.model",)),
    (3, "torch side", ("adaptive.nn",)),
    (4, "envs", ("envs",)),
    (5, "agents", ("agents",)),
    (6, "runtime", ("adaptive.runtime",)),
    (7, "control", ("adaptive.control",)),
    (8, "lab", ("adaptive.lab",)),
    (9, "experiments", ("adaptive.experiments",)),
    (10, "CLI", ("adaptive.cli", "adaptive.__main__")),
]
# Narrower than the floors: what these may import from the project, whatever their floor.
ONLY: dict[str, tuple[str, ...]] = {
    "adaptive.protocol": ("adaptive.protocol",),   # standard library only: a bare Pi imports it
    "monitor": ("monitor", "adaptive.protocol"),   # the agent a bare Pi runs
}
# The package roots: ``adaptive/__init__`` installs the moved paths, the others import it for that.
ROOTS = {"adaptive", "agents", "envs", "monitor"}

LIBRARY_FUNCTION_LINES = 80  # a function reads in one screen
LIBRARY_CLASS_LINES = 350
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()
TREES = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in MODULES.items()}


def _imports(name: str) -> Iterator[tuple[str, int]]:
    """Project modules ``name`` imports anywhere in its file (lazy imports included), with lines."""
    is_package = MODULES[name].name == "__init__.py"
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.split(".")[0] in PACKAGES:
                yield target, node.lineno


def _floor(module: str) -> tuple[int, str]:
    best: tuple[int, int, str] | None = None
    for level, label, prefixes in FLOORS:
        for prefix in prefixes:
            if _within(module, (prefix,)) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), level, label)
    if best is None:
        raise AssertionError(f"{module} is on no floor: add it to FLOORS in tests/test_layout.py")
    return best[1], best[2]


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_every_module_is_on_a_floor() -> None:
    for name in MODULES:
        if name not in ROOTS:
            _floor(name)


def test_no_module_imports_from_a_higher_floor() -> None:
    wrong = []
    for name in MODULES:
        if name in ROOTS:
            continue
        level, label = _floor(name)
        where = MODULES[name].relative_to(ROOT)
        for target, line in _imports(name):
            if target in ROOTS:
                continue
            t_level, t_label = _floor(target)
            if t_level > level:
                wrong.append(f"{where}:{line} ({label}) imports {target} ({t_label})")
            for prefix, allowed in ONLY.items():
                if _within(name, (prefix,)) and not _within(target, allowed):
                    wrong.append(f"{where}:{line} imports {target}: {prefix} "
                                 f"may import only {', '.join(allowed)}")
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_circles() -> None:
    graph = {name: {t for t, _ in _imports(name) if t in MODULES and t != name} for name in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _private_names(tree: ast.AST) -> set[str]:
    """``_names`` a module defines: functions, classes, attributes it assigns, names it binds."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {n for n in names if _private(n)}


def _reaches(trees: dict[str, ast.AST]) -> list[str]:
    """Every place a module uses a ``_name`` that another module of ``trees`` defines."""
    defined = {name: _private_names(tree) for name, tree in trees.items()}
    everywhere = set().union(*defined.values())
    wrong = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                wrong += [f"{name}:{node.lineno} imports {a.name}" for a in node.names if _private(a.name)]
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                owner = node.value
                if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
                    continue
                if isinstance(owner, ast.Call) and getattr(owner.func, "id", None) == "super":
                    continue
                if node.attr in NAMEDTUPLE_API or node.attr not in everywhere:
                    continue  # a public API with a leading underscore, or a name of another library
                if node.attr not in defined[name]:
                    wrong.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    return wrong


def test_no_module_reaches_into_another_modules_private_names() -> None:
    wrong = _reaches(TREES)
    assert not wrong, "\n".join(wrong)


def _too_long(trees: dict[str, ast.AST]) -> list[str]:
    wrong = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            lines = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and lines > LIBRARY_FUNCTION_LINES:
                wrong.append(f"{name}:{node.lineno} {node.name}(): {lines} lines")
            if isinstance(node, ast.ClassDef) and lines > LIBRARY_CLASS_LINES:
                wrong.append(f"{name}:{node.lineno} class {node.name}: {lines} lines")
    return wrong


def test_functions_and_classes_read_in_one_screen() -> None:
    wrong = _too_long(TREES)
    assert not wrong, "\n".join(wrong)


def test_the_rules_catch_what_they_are_meant_to() -> None:
    """The checks above would fail on a forbidden edge (they are not vacuous)."""
    assert _floor("adaptive.model.latency")[0] < _floor("adaptive.control.controller")[0]
    assert _floor("monitor.agent")[0] < _floor("adaptive.model.latency")[0]
    assert not _within("adaptive.model.latency", ONLY["monitor"])
    imports = dict(_imports("adaptive.runtime.source"))
    assert "adaptive.protocol.rules" in imports and "adaptive.model.mlp" in imports
    trees = {"a": ast.parse("class A:\n    def __init__(self):\n        self._stop = 1\n"),
             "b": ast.parse("from a import _helper\ndef f(c):\n    return c._stop, c._replace(), c._other\n")}
    assert _reaches(trees) == ["b:1 imports _helper", "b:3 c._stop"]
    body = "\n".join(f"    x = {i}" for i in range(LIBRARY_FUNCTION_LINES))
    assert _too_long({"m": ast.parse(f"def f():\n{body}\n")}) == ["m:1 f(): 81 lines"]
