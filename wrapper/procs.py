"""Run a child process with its full output in a log file and a short story on screen.

Children get their own process group so that Ctrl-C stops the whole tree
(llamafactory-cli starts workers of its own), and on failure the last lines of the
log are shown with the log's path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from wrapper.errors import StageError

TAIL_LINES = 15


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
    from wrapper.ui import users_env

    env = dict(os.environ)
    for key, value in users_env.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Children are the venv's tools; make sure they find each other even if the venv isn't activated.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def run_logged(
    argv: list[str],
    log_path: Path,
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    poll: Callable[[], None] | None = None,
) -> None:
    """Run argv to completion, output appended to log_path; call poll() about twice a second."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(argv)}\n".encode())
        log.flush()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=child_env(env), cwd=cwd, start_new_session=True)
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
        raise StageError(f"{what} (exit code {child.returncode})", log_path, last_lines(log_path))


def stop_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)
        child.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def run_with_status(argv: list[str], log_path: Path, what: str, description: str,
                    env: dict[str, str] | None = None) -> None:
    """run_logged under a spinner whose status is the child's latest log line."""
    from wrapper.ui import stage_progress

    with stage_progress() as progress:
        task = progress.add_task(description, total=None, status="")

        def show_last_line() -> None:
            tail = last_lines(log_path, 1)
            progress.update(task, status=(tail[0][:70] if tail else ""))

        run_logged(argv, log_path, what, env=env, poll=show_last_line)
