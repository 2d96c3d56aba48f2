"""Windows-readiness, held from Linux CI (issue #27): what cannot run on Windows is never chosen there.

The Windows branches are tested here with `sys.platform` set to "win32"; that they work on a real Windows
machine is not claimed (README.md, "Windows").
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wrapper.config import planner
from wrapper.config.profiles import load_profile
from wrapper.config.recipes import load_recipe
from wrapper.core.errors import FtwError
from wrapper.core.platform import NO_LIGER
from wrapper.train.render import tuned_args

from tests.support.runner import REPO


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")


def test_a_liger_profile_plans_without_liger_on_windows(windows):
    args, origins = tuned_args(load_recipe("qwen3-8b"), load_profile("rtx4070"))
    assert args["enable_liger_kernel"] is False and origins["enable_liger_kernel"] == NO_LIGER
    assert planner.settings_from_args(args, "qlora", 1).liger is False


def test_a_liger_profile_keeps_liger_on_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    args, origins = tuned_args(load_recipe("qwen3-8b"), load_profile("rtx4070"))
    assert args["enable_liger_kernel"] is True and "rtx4070.yaml" in origins["enable_liger_kernel"]


@pytest.mark.parametrize("name", ["rtx4090x2", "cpux2"])
def test_several_gpus_or_processes_are_refused_on_windows_with_the_single_profile_to_use(windows, name):
    with pytest.raises(FtwError, match=rf"Linux only.*--profile {name[:-2]}$"):
        load_profile(name)


def test_one_gpu_of_a_profile_loads_on_windows(windows):
    assert load_profile("rtx4090").gpus == 1


# ---- POSIX-only names only behind a platform branch --------------------------------------------

# Names Windows' Python lacks (typeshed marks them; `mypy --platform win32` finds the attributes too).
POSIX_ATTRIBUTES = {
    ("signal", "SIGHUP"),
    ("signal", "SIGKILL"),
    ("signal", "SIGQUIT"),
    ("os", "killpg"),
    ("os", "getpgid"),
    ("os", "setsid"),
    ("os", "fork"),
}
POSIX_MODULES = {"fcntl", "termios", "resource", "pwd", "grp"}
PLATFORM_TESTS = ("sys.platform", "os.name", "hasattr(")
# file -> why its POSIX-only names may stay where they are
ALLOWED = {
    "wrapper/core/platform.py": "its POSIX branches: each function returns early on win32",
    "wrapper/core/cpu.py": "reads the CPU's flags from procfs under try/except OSError: elsewhere PyTorch answers",
    "wrapper/train/stage.py": "reads MemAvailable from procfs under try/except OSError: elsewhere no RAM check",
    "tests/test_llama_server.py": "servers_of() reads procfs; only the tests marked posix_only call it",
    "tests/test_windows_ready.py": "the names this check looks for",
}


def is_proc_path(value: object) -> bool:
    return isinstance(value, str) and (value == "/proc" or value.startswith("/proc/"))


def posix_only_names(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, name) of each POSIX-only name in the module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if (node.value.id, node.attr) in POSIX_ATTRIBUTES:
                found.append((node, f"{node.value.id}.{node.attr}"))
        elif isinstance(node, ast.keyword) and node.arg == "preexec_fn":
            found.append((node, "preexec_fn"))
        elif isinstance(node, ast.Import):
            found += [(node, f"import {a.name}") for a in node.names if a.name.split(".")[0] in POSIX_MODULES]
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in POSIX_MODULES
        ):
            found.append((node, f"from {node.module}"))
        elif isinstance(node, ast.Constant) and is_proc_path(node.value):
            found.append((node, repr(node.value)))
    guarded = guarded_nodes(tree)
    return [(node.lineno, name) for node, name in found if id(node) not in guarded]


def guarded_nodes(tree: ast.Module) -> set[int]:
    """Every node under a branch on the platform: `if sys.platform ...`, `hasattr(...)` or `os.name`, a
    test function or module marked with a skipif on sys.platform (directly or through a module-level name)."""

    def mentions_platform(node: ast.AST) -> bool:
        text = ast.unparse(node)
        return any(word in text for word in PLATFORM_TESTS) or any(name in text for name in platform_marks)

    platform_marks = [
        target.id
        for node in tree.body
        if isinstance(node, ast.Assign) and "sys.platform" in ast.unparse(node.value)
        for target in node.targets
        if isinstance(target, ast.Name)
    ]
    roots: list[ast.AST] = []
    if "pytestmark" in platform_marks:
        return {id(node) for node in ast.walk(tree)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.If, ast.While)) and mentions_platform(node.test):
            roots += [*node.body, *node.orelse]
        elif isinstance(node, ast.IfExp) and mentions_platform(node.test):
            roots += [node.body, node.orelse]
        elif isinstance(node, ast.BoolOp):
            roots += [node] if any(mentions_platform(value) for value in node.values) else []
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            roots += [node] if any(mentions_platform(decorator) for decorator in node.decorator_list) else []
    return {id(inner) for root in roots for inner in ast.walk(root)}


def python_files() -> list[Path]:
    return sorted(path for folder in ("wrapper", "tests") for path in (REPO / folder).rglob("*.py"))


def test_posix_only_names_are_used_only_behind_a_platform_branch():
    offenders = [
        f"{name}:{line}: {what}"
        for path in python_files()
        if (name := path.relative_to(REPO).as_posix()) not in ALLOWED
        for line, what in posix_only_names(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == [], (
        "Windows' Python has none of these: branch on sys.platform (wrapper/core/platform.py), or mark the test "
        'pytest.mark.skipif(sys.platform == "win32", ...):\n' + "\n".join(offenders)
    )


@pytest.mark.parametrize(
    "source, found",
    [
        ("import os\nos.killpg(1, 9)", ["os.killpg"]),
        ("import signal\nsignal.signal(signal.SIGHUP, None)", ["signal.SIGHUP"]),
        ("import subprocess\nsubprocess.Popen(['x'], preexec_fn=print)", ["preexec_fn"]),
        ("import fcntl", ["import fcntl"]),
        ("open('/proc/meminfo')", ["'/proc/meminfo'"]),
        ("import os, sys\nif sys.platform != 'win32':\n    os.killpg(1, 9)", []),
        ("import os\nif hasattr(os, 'killpg'):\n    os.killpg(1, 9)", []),
        ("import os\nx = os.fork() if os.name == 'posix' else None", []),
        (
            "import os, sys, pytest\n@pytest.mark.skipif(sys.platform == 'win32', reason='')\ndef t():\n    os.fork()",
            [],
        ),
        (
            "import sys, pytest\nposix = pytest.mark.skipif(sys.platform == 'win32', reason='')\n"
            "@posix\ndef t():\n    open('/proc')",
            [],
        ),
    ],
)
def test_the_posix_check_sees_each_name_and_each_kind_of_branch(source, found):
    assert [what for _, what in posix_only_names(ast.parse(source))] == found


def test_every_allowed_file_still_needs_its_place_on_the_list():
    needless = [name for name in ALLOWED if not posix_only_names(ast.parse((REPO / name).read_text(encoding="utf-8")))]
    assert needless == [], f"no POSIX-only name left in these: remove them from ALLOWED: {needless}"


# ---- the pins resolve for Windows ----------------------------------------------------------------

UV_NETWORK_ERRORS = ("error sending request", "dns error", "failed to connect", "connection refused", "timed out")


def uv_program() -> str | None:
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


@pytest.mark.parametrize("python", ["3.11", "3.12", "3.13"])
def test_requirements_resolve_for_windows(python, tmp_path):
    """uv resolves for another platform from the registry's metadata alone (no wheel is downloaded); pip can't:
    its --platform still evaluates the markers for this Linux interpreter."""
    uv = uv_program()
    if uv is None:
        pytest.skip("uv is not installed (not in requirements.txt): pip install uv to check the Windows resolution")
    result = subprocess.run(
        [uv, "pip", "compile", str(REPO / "requirements.txt"), "--python-platform", "x86_64-pc-windows-msvc"]
        + ["--python-version", python, "--quiet", "--no-header", "-o", str(tmp_path / "resolved.txt")],
        cwd=tmp_path,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "UV_HTTP_TIMEOUT": "60"},
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
    )
    if result.returncode != 0 and any(error in result.stderr.lower() for error in UV_NETWORK_ERRORS):
        pytest.skip(f"the package registry is not reachable from here: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stderr
    resolved = (tmp_path / "resolved.txt").read_text(encoding="utf-8")
    assert "\ntorch==" in resolved and "liger-kernel" not in resolved and "deepspeed" not in resolved


# ---- every text file names its encoding ----------------------------------------------------------

# The CLI in process, a run's manifest and status, ftw doctor: ~20 s. The whole fast tier passed this check when
# it was added (pytest -n 0 -X warn_default_encoding -p no:warnings -p tests.support.encoding_check tests).
ENCODING_CHECKED = ("tests/test_cli.py", "tests/test_status.py", "tests/test_doctor.py")


def test_ftws_code_and_tests_name_the_encoding_of_every_text_file():
    """Python's EncodingWarning (-X warn_default_encoding) on every open() / read_text / write_text / text-mode
    subprocess without encoding=, counted where wrapper/ or tests/ made the call (tests/support/encoding_check.py).
    On Windows these would read and write the ANSI code page."""
    result = subprocess.run(
        [sys.executable, "-X", "warn_default_encoding", "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider"]
        + ["-p", "no:warnings", "-p", "tests.support.encoding_check", *ENCODING_CHECKED],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


# ---- no make, bash or sh needed --------------------------------------------------------------------

POSIX_PROGRAMS = {"make", "bash", "sh", "dd", "unshare"}


def shell_outs(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, program) of each child started with a POSIX program's name, or shell=True, outside a platform branch."""
    guarded = guarded_nodes(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or id(node) in guarded:
            continue
        first = node.args[0] if node.args else None
        program = first.elts[0] if isinstance(first, ast.List) and first.elts else None
        if isinstance(program, ast.Constant) and program.value in POSIX_PROGRAMS:
            found.append((node.lineno, program.value))
        if any(k.arg == "shell" and isinstance(k.value, ast.Constant) and k.value.value for k in node.keywords):
            found.append((node.lineno, "shell=True"))
    return found


def test_nothing_runs_make_bash_or_sh_outside_a_posix_only_test():
    offenders = [
        f"{path.relative_to(REPO).as_posix()}:{line}: {what}"
        for path in python_files()
        for line, what in shell_outs(ast.parse(path.read_text(encoding="utf-8")))
    ]
    assert offenders == [], "Windows has none of these: run Python (sys.executable) instead:\n" + "\n".join(offenders)


def test_ftw_starts_and_reports_with_no_make_bash_or_sh_on_path(tmp_path):
    """PATH holds only the venv's programs: what the fast tests' `ftw` needs is there or in Python."""
    env = {**os.environ, "PATH": str(Path(sys.executable).parent), "FTW_RUNS_DIR": str(tmp_path / "runs")}
    assert not any(shutil.which(program, path=env["PATH"]) for program in ("make", "bash", "sh"))
    for argv in (["--version"], ["doctor"]):
        result = subprocess.run(
            [sys.executable, "-m", "wrapper.cli", *argv],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
