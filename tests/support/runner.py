"""Running `ftw` in a test: in this process (`ftw_in_process`: fast, for commands that print and write
files) or in a child process (`run_ftw`, `start_ftw`: a real process of its own, for signals, locks,
its own environment and whatever loads a model)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[2]
FTW = [sys.executable, "-m", "wrapper.cli"]
# The console script pip installed, as a user types it (its own entry point, any working folder).
FTW_SCRIPT = Path(sys.executable).parent / "ftw"
COLUMNS = "200"  # wide enough that the lines the tests look for are not wrapped

# Set for the shared demo run: no artifact of it may contain this (tests/test_pipeline.py).
FAKE_HF_TOKEN = "hf_ftwFakeTokenNeverWrittenAnywhere0123"


def ftw_env(runs_dir: Path, env: dict[str, str | None] | None = None) -> dict[str, str]:
    """This process's environment with the runs folder and the console width set; `env` wins (None: unset)."""
    merged: dict[str, str | None] = {**os.environ, "FTW_RUNS_DIR": str(runs_dir), "COLUMNS": COLUMNS, **(env or {})}
    return {key: value for key, value in merged.items() if value is not None}


def ftw_argv(installed: bool) -> list[str]:
    if not installed:
        return list(FTW)
    found = str(FTW_SCRIPT) if FTW_SCRIPT.is_file() else shutil.which("ftw")
    assert found, "the ftw console script is not installed"
    return [found]


def run_ftw(
    runs_dir: Path,
    *args: str,
    check: bool = True,
    timeout: float | None = 900,
    env: dict[str, str | None] | None = None,
    stdin: str | None = None,
    cwd: Path = REPO,
    installed: bool = False,
) -> subprocess.CompletedProcess:
    """`ftw ARGS` in a child process, to completion; `check`: its exit code must be 0.
    `installed`: the console script rather than `python -m wrapper.cli`."""
    result = subprocess.run(
        [*ftw_argv(installed), *args],
        cwd=cwd,
        env=ftw_env(runs_dir, env),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        encoding="utf-8",
    )
    if check and result.returncode != 0:
        raise AssertionError(f"ftw {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def start_ftw(runs_dir: Path, *args: str, env: dict[str, str | None] | None = None, **popen) -> subprocess.Popen:
    """`ftw ARGS` started in a child process, its output (stdout and stderr) in one text pipe."""
    return subprocess.Popen(
        [*FTW, *args],
        cwd=REPO,
        env=ftw_env(runs_dir, env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        **popen,
    )


class Ran(NamedTuple):
    code: int
    output: str  # stdout and stderr, every run of whitespace one space: the console wraps lines anywhere


def ftw_in_process(*args: str) -> Ran:
    """The real entry point (wrapper.cli.main) in this process, so that what it loads (a tokenizer,
    LLaMA-Factory's templates) loads once per test session. The runs folder is $FTW_RUNS_DIR (the
    runs_dir fixture). What main() sets for a whole ftw process (quiet library logging, signal handlers,
    environment) is undone afterwards: later tests' child processes get what a terminal would give."""
    # Imported here, not at the top: conftest.py imports this module before it pins the worker's threads,
    # and the CLI's imports must not start PyTorch before that.
    from wrapper import cli

    argv, env = sys.argv, dict(os.environ)
    handlers = {signum: signal.getsignal(signum) for signum in cli.STOP_SIGNALS}
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["ftw", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        sys.argv = argv
        os.environ.clear()
        os.environ.update(env)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    return Ran(code, " ".join((out.getvalue() + err.getvalue()).split()))


def copy_run(run: Path, runs_dir: Path) -> Path:
    """A copy of `run` under another runs folder, its manifest's paths pointed at the copy."""
    copy = runs_dir / run.name
    shutil.copytree(run, copy, symlinks=True)
    point_manifest_at(copy, run)
    return copy


def linked_copy(run: Path, runs_dir: Path) -> Path:
    """The run's folder with its weights and GGUFs linked, not copied; its manifest pointed at the copy.
    For tests that write into a run (`ftw eval`) without writing into the shared demo run."""
    copy = runs_dir / run.name
    copy.mkdir(parents=True)
    for entry in run.iterdir():
        if entry.name in ("merged", "gguf", "adapter"):
            (copy / entry.name).symlink_to(entry, target_is_directory=True)
        elif entry.is_dir():
            shutil.copytree(entry, copy / entry.name)
        else:
            shutil.copy2(entry, copy / entry.name)
    point_manifest_at(copy, run)
    return copy


def point_manifest_at(copy: Path, run: Path) -> None:
    """A copied run's manifest names the original's folder: make it name the copy."""
    manifest = copy / "manifest.json"
    manifest.write_text(manifest.read_text(encoding="utf-8").replace(str(run), str(copy)), encoding="utf-8")
