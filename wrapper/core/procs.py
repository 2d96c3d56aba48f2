"""Run a child process with its full output in a log file and a short story on screen.

Children get their own process group so that Ctrl-C stops the whole tree
(llamafactory-cli starts workers of its own), and on failure the last lines of the
log are shown with the log's path. How a group starts and stops on each system: platform.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wrapper.core import platform
from wrapper.core.errors import StageError
from wrapper.core.ui import stage_progress, users_env

TAIL_LINES = 15
LOW_DISK_BYTES = 256 * 2**20  # less than this free after a child failed: the disk filled up
STOP_GRACE_S = 10  # after SIGTERM (Windows: CTRL_BREAK_EVENT), before SIGKILL (the tree killed)


def last_lines(log_path: Path, count: int = TAIL_LINES) -> list[str]:
    if not log_path.is_file():
        return []
    with log_path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 64 * 1024))
        text = handle.read().decode("utf-8", errors="replace")
    # Progress bars redraw with carriage returns; keep what the last redraw said.
    lines = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return [line for line in lines if line.strip()][-count:]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in users_env.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Children are the venv's tools; make sure they find each other even if the venv isn't activated.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    platform.add_utf8(env)
    env.update(extra or {})
    return env


def disk_full_hint(folder: Path | None) -> str:
    """Children report a full disk in their own words ("884736 requested and 0 written"); say it plainly."""
    if folder is None:
        return ""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None:
        return ""
    free = shutil.disk_usage(existing).free
    if free >= LOW_DISK_BYTES:
        return ""
    return (
        f"The disk under {folder} is full ({free / 2**20:.0f} MiB free): that is the likely cause. "
        f"Free some space and re-run the same command."
    )


def popen_logged(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """argv started in its own process group, its output appended to log_path after a `$ argv` line.
    A bare program name is looked up on the child's PATH (its venv first) before anything starts."""
    child_environment = child_env(env)
    program = platform.find_program(argv[0], child_environment)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            executable=program,
            env=child_environment,
            cwd=cwd,
            **platform.own_group_options(),
        )


def run_logged(
    argv: list[str],
    log_path: Path,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    poll: Callable[[], None] | None = None,
    writes_to: Path | None = None,
) -> None:
    """Run argv to completion, output appended to log_path; call poll() about twice a second.
    `writes_to`: where the child writes, to name a full disk as the cause if it fails."""
    child = popen_logged(argv, log_path, env=env, cwd=cwd)
    try:
        while child.poll() is None:
            if poll:
                poll()
            time.sleep(0.5)
    except BaseException:
        stop_group(child)
        raise
    if poll:
        poll()
    if child.returncode != 0:
        raise StageError(
            f"{what} (exit code {child.returncode})", log_path, last_lines(log_path), disk_full_hint(writes_to)
        )


def stop_group(child: subprocess.Popen) -> None:
    """Stop the child's whole group and wait for all of it; what outlives the grace is killed (platform.py)."""
    platform.stop_group(child, STOP_GRACE_S)


def run_with_status(
    argv: list[str],
    log_path: Path,
    what: str,
    description: str,
    env: dict[str, str] | None = None,
    writes_to: Path | None = None,
    cwd: Path | None = None,
) -> None:
    """run_logged under a spinner whose status is the child's latest log line."""
    with stage_progress() as progress:
        task = progress.add_task(description, total=None, status="")

        def show_last_line() -> None:
            tail = last_lines(log_path, 1)
            progress.update(task, status=(tail[0][:70] if tail else ""))

        run_logged(argv, log_path, what, env=env, cwd=cwd, poll=show_last_line, writes_to=writes_to)
