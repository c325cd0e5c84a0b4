"""The package's structure, read from its source with :mod:`ast`.

* The modules import each other as a stack: no import circle, counting
  imports inside functions as well (a lazy import must not hide one).
* The solver (``sklearn_sela.sinkhorn``) is the ground floor: of the rest of
  the package it imports only ``collectives``, which imports nothing.
  Nothing imports the command line.
* No private name (one leading underscore) is used outside the module that
  defines it: not imported, not called as an attribute; a private module is
  imported only from inside its own package.
* No module is over ~700 lines without saying why at its top, and no
  function of the command line is over 60 lines.
"""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sklearn_sela"
MAX_LINES = 700
MAX_CLI_FUNCTION = 60


def _module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def _is_private(name):
    return name.startswith("_") and not name.startswith("__")


def _package_of(name):
    return name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]


def _imports(name):
    """``(line, imported module, imported name or None)`` for every import of
    a package module in module ``name``, at any depth."""
    found = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "sklearn_sela":
                    found.append((node.lineno, alias.name, None))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name).split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "sklearn_sela":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # "from . import module"
                    found.append((node.lineno, sub, None))
                else:
                    found.append((node.lineno, target, alias.name))
    return found


def _edges():
    """Module -> set of package modules it imports (a package's face counts
    as the package)."""
    edges = {name: set() for name in MODULES}
    for name in MODULES:
        for _, target, _ in _imports(name):
            if target in MODULES and target != name:
                edges[name].add(target)
    return edges


def _private_defs():
    """Private function, method and class names, by defining module."""
    defs = {}
    for name, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                if _is_private(node.name):
                    defs.setdefault(node.name, set()).add(name)
    return defs


def test_no_import_circle():
    edges = _edges()
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if nxt == _package_of(node) or node == _package_of(nxt):
                continue  # a package's face and its own modules
            if state.get(nxt) == "open":
                circles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for name in sorted(edges):
        if name not in state:
            visit(name)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_solver_is_the_ground_floor():
    edges = _edges()
    solver = {n for n in MODULES if n == "sklearn_sela.sinkhorn" or n.startswith("sklearn_sela.sinkhorn.")}
    assert len(solver) > 1
    for name in solver:
        outside = {t for t in edges[name] if t not in solver}
        assert outside <= {"sklearn_sela.collectives"}, (name, outside)
    assert not edges["sklearn_sela.collectives"]
    for name, targets in edges.items():
        if not name.startswith("sklearn_sela.cli") and name != "sklearn_sela.__main__":
            assert not {t for t in targets if t.startswith("sklearn_sela.cli")}, name


def test_no_private_name_crosses_a_module():
    defs = _private_defs()
    problems = []
    for name in MODULES:
        package = _package_of(name)
        for line, target, imported in _imports(name):
            if imported is not None and _is_private(imported) and target != name:
                problems.append(f"{name}:{line} imports {target}.{imported}")
            last = target.rpartition(".")[2]
            if _is_private(last) and _package_of(target) != package:
                problems.append(f"{name}:{line} imports private module {target}")
        for node in ast.walk(TREES[name]):
            if (
                isinstance(node, ast.Attribute)
                and _is_private(node.attr)
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
                and node.attr in defs
                and name not in defs[node.attr]
            ):
                where = ", ".join(sorted(defs[node.attr]))
                problems.append(f"{name}:{node.lineno} uses {node.attr} of {where}")
    assert not problems, "\n".join(problems)


def test_long_modules_say_why():
    long = []
    for name, path in MODULES.items():
        n_lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(TREES[name]) or ""
        if n_lines > MAX_LINES and not re.search(r"over 700 lines", doc):
            long.append(f"{name}: {n_lines} lines")
    assert not long, "modules over ~700 lines without a reason at the top:\n" + "\n".join(long)


@pytest.mark.parametrize(
    "name", sorted(n for n in MODULES if n == "sklearn_sela.cli" or n.startswith("sklearn_sela.cli."))
)
def test_command_line_functions_fit_on_a_screen(name):
    long = [
        f"{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for node in ast.walk(TREES[name])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 >= MAX_CLI_FUNCTION
    ]
    assert not long, long
