"""The package's layering: no import cycle between its modules, imports of its own
modules at the top of a file (an import inside a function says why on its line), no
module past about 400 lines without its docstring saying why, and no algorithm named
outside its own files."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deimos_ray"
MAX_LINES = 420  # "about 400"


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name (a package by its __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def top_level_imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports when it is imported (not inside a
    function, not only for type checking), parents included as Python imports them."""
    tree = ast.parse(path.read_text())
    targets: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets.add(node.module)
                targets.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.If | ast.Try):
                visit(node.body + node.orelse + getattr(node, "finalbody", []))
    visit(tree.body)
    # Importing a.b.c runs a.b's __init__ first, unless a.b is an ancestor of this module
    # (already being imported when a submodule runs: the usual package layout).
    ancestors = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    edges = set()
    for target in targets:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            candidate = ".".join(parts[:i])
            if candidate in known and candidate != name and candidate not in ancestors:
                edges.add(candidate)
    return edges


def test_the_package_has_no_import_cycle():
    found = modules()
    graph = {name: top_level_imports(path, name, set(found)) for name, path in found.items()}
    cycles = []
    state: dict[str, int] = {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else nxt)
            elif nxt not in state:
                walk(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert not cycles, cycles


def test_a_cycle_is_found_when_there_is_one(tmp_path, monkeypatch):
    # The check above must be able to fail: two modules importing each other.
    (tmp_path / "deimos_ray").mkdir()
    (tmp_path / "deimos_ray" / "__init__.py").write_text("")
    (tmp_path / "deimos_ray" / "a.py").write_text("from deimos_ray.b import f\n")
    (tmp_path / "deimos_ray" / "b.py").write_text("def f():\n    pass\nfrom deimos_ray import a\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path / "deimos_ray")
    with pytest.raises(AssertionError, match="deimos_ray.a -> deimos_ray.b -> deimos_ray.a"):
        test_the_package_has_no_import_cycle()


def test_imports_of_the_package_inside_functions_say_why():
    unexplained = []
    for path in modules().values():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    module = inner.module if isinstance(inner, ast.ImportFrom) else None
                    if module and module.startswith("deimos_ray") and "#" not in lines[inner.lineno - 1]:
                        unexplained.append(f"{path.name}:{inner.lineno} {module}")
    assert not unexplained, unexplained


def test_no_module_runs_past_about_400_lines_without_saying_why():
    long = []
    for name, path in modules().items():
        text = path.read_text()
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and "400 lines" not in docstring:
            long.append(f"{name}: {len(text.splitlines())} lines")
    assert not long, long


def test_no_algorithm_is_chosen_by_name_outside_its_own_files():
    # The algorithms' own folders (and their models, losses and loops) may name them.
    allowed = ("algorithms", "models", "losses", "train")
    pattern = re.compile(r"""(==|!=)\s*["'](dac|dec|idec|desom)["']""")
    hits = [f"{path.relative_to(PACKAGE)}:{n}" for name, path in modules().items()
            if path.relative_to(PACKAGE).parts[0] not in allowed
            for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, hits
