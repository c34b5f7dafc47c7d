"""The package's shape: imports point down the layers, no module imports itself round a
cycle, and imports hidden inside functions stay the few that load something heavy lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "snews_tasks"
#: Function-local imports of the package's own modules, each loading a heavy part lazily.
LAZY_IMPORTS_ALLOWED = 7


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_imports(path: Path, tree: ast.AST) -> Iterator[tuple[ast.AST, str]]:
    """(node, imported module) for each import of a snews_tasks module in `path`'s `tree`."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("snews_tasks"):
                names = [f"{target}.{a.name}" for a in node.names]
                yield node, next((n for n in names if _is_module(n)), target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("snews_tasks"):
                    yield node, alias.name


def _is_module(name: str) -> bool:
    relative = Path(*name.split(".")[1:])
    return (PACKAGE / relative).with_suffix(".py").is_file() or (PACKAGE / relative).is_dir()


def function_local(tree: ast.AST) -> set[int]:
    """ids of import nodes inside a function body."""
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found |= {id(inner) for inner in ast.walk(node)
                      if isinstance(inner, ast.Import | ast.ImportFrom)}
    return found


def test_layers_point_down_and_the_core_does_no_io() -> None:
    """The contracts in pyproject.toml ([tool.importlinter]), checked by import-linter."""
    checked = subprocess.run([str(Path(sys.executable).parent / "lint-imports")],
                             capture_output=True, text=True, cwd=PACKAGE.parent, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 broken" in checked.stdout


def test_no_module_imports_itself_round_a_cycle() -> None:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        graph.setdefault(module_name(path), set()).update(
            target for _, target in own_imports(path, ast.parse(path.read_text())))
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or target in module_name_parents(module):
                continue  # a package's own __init__ is not a cycle
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target] if target in path
                              else [module, target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def module_name_parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_imports_inside_functions_are_only_the_lazy_few() -> None:
    lazy = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        inside = function_local(tree)
        lazy += [f"{module_name(path)} -> {target}" for node, target in own_imports(path, tree)
                 if id(node) in inside]
    assert len(lazy) <= LAZY_IMPORTS_ALLOWED, "\n".join(lazy)
