"""Architecture figures of wrapper/: modules (package __init__ files not counted), packages,
lines, the largest module, modules over 450 lines, functions over 60 lines, classes that inherit
from a project class, calls that print outside commands/, imports inside functions (all, and of
project modules) and import cycles between modules (groups that import each other, counting
imports inside functions).

  .venv/bin/python bench/codebase.py [--tree OTHER_CHECKOUT] [--json OUT]

Imports are read from the source with ast, so nothing is imported or run. For a before/after
comparison, run it on both trees formatted the same way (`ruff format` changes line counts).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

from repo_path import REPO

PACKAGE = REPO / "wrapper"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.AST, current: str, known: set[str]) -> list[str]:
    """The project modules one import statement names (a `from pkg import mod` names pkg.mod)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = current.rsplit(".", node.level)[0] if node.level else current
            base = f"{package}.{base}" if base else package
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    found = []
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


LONG_MODULE_LINES = 450
LONG_FUNCTION_LINES = 60
# Where printing belongs (ARCHITECTURE.md, "Output"): the commands, the entry point, the console module,
# and the setup scripts make runs.
PRINTING_PLACES = ("wrapper.commands", "wrapper.cli", "wrapper.core.ui", "wrapper.setup")


def output_calls(tree: ast.AST) -> int:
    """print(...) and console.print/.status(...) calls."""
    return sum(1 for node in ast.walk(tree) if isinstance(node, ast.Call) and prints(node.func))


def prints(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "print"
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "console"


def long_functions(tree: ast.AST) -> int:
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and (node.end_lineno or node.lineno) - node.lineno + 1 > LONG_FUNCTION_LINES
    )


def project_subclasses(tree: ast.AST, defined: set[str]) -> int:
    """Classes whose base is a class of the project's own (by name), not a dataclass, Protocol or library class."""
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            (base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")) in defined
            for base in node.bases
        )
    )


def scan() -> dict:
    files = sorted(PACKAGE.rglob("*.py"))
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in files}
    defined = {
        node.name
        for tree in trees.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and not any(getattr(b, "id", "") == "Protocol" for b in node.bases)
    }
    defined -= {"Exception"}
    known = {module_name(path) for path in files}
    graph: dict[str, set[str]] = {}
    lines: dict[str, int] = {}
    local_imports = local_project_imports = 0
    functions_over = subclasses = printing_elsewhere = 0
    for path in files:
        name = module_name(path)
        tree = trees[path]
        lines[name] = len(path.read_text(encoding="utf-8").splitlines())
        functions_over += long_functions(tree)
        subclasses += project_subclasses(tree, defined)
        if not name.startswith(PRINTING_PLACES):
            printing_elsewhere += output_calls(tree)
        graph[name] = set()
        module_level = {id(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))}
        for stmt in tree.body:  # `if TYPE_CHECKING:` blocks are module level too
            if isinstance(stmt, ast.If):
                module_level |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            targets = [t for t in imported_modules(node, name, known) if t != name]
            graph[name].update(targets)
            if id(node) not in module_level:
                local_imports += 1
                local_project_imports += bool(targets)
    cycles = strongly_connected(graph)
    largest = max(lines, key=lines.get)
    return {
        "modules": sum(1 for path in files if path.name != "__init__.py"),
        "packages": sorted({n for n in known if (PACKAGE.parent / n.replace(".", "/") / "__init__.py").is_file()}),
        "lines": sum(lines.values()),
        "largest_module": {"name": largest, "lines": lines[largest]},
        "modules_over_450_lines": sorted(n for n, count in lines.items() if count > LONG_MODULE_LINES),
        "functions_over_60_lines": functions_over,
        "subclasses_of_project_classes": subclasses,
        "output_calls_outside_commands": printing_elsewhere,
        "function_local_imports": local_imports,
        "function_local_project_imports": local_project_imports,
        "cycles": [sorted(c) for c in cycles],
    }


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or not."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.add(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(group)

    sys.setrecursionlimit(10000)
    for node in graph:
        if node not in index:
            visit(node)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--tree", type=Path, help="another checkout to measure (an older commit's worktree)")
    args = parser.parse_args()
    if args.tree:
        global REPO, PACKAGE
        REPO, PACKAGE = args.tree.resolve(), args.tree.resolve() / "wrapper"
    figures = scan()
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
