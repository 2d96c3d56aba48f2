"""One writer per run: a command that writes into runs/RUN holds an OS file lock on it meanwhile.

The lock is the operating system's (filelock: fcntl on Linux and macOS, msvcrt on Windows), so it
goes with its process: a lock left by a process that died is simply free. Beside it, a small JSON
says who holds it, for the message the second writer gets. Locks live in runs/.locks/, not in the
run folder, so that a refused `ftw render` still leaves no run folder behind.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from wrapper.core.errors import FtwError
from wrapper.core.fsutil import write_text_exact
from wrapper.core.paths import runs_dir

LOCKS = ".locks"


def lock_paths(run: str) -> tuple[Path, Path]:
    folder = runs_dir() / LOCKS
    return folder / f"{run}.lock", folder / f"{run}.holder.json"


def holder(run: str) -> dict:
    try:
        return json.loads(lock_paths(run)[1].read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


@contextmanager
def run_lock(run: str, command: str | None = None) -> Iterator[None]:
    """Held while the block runs; refused at once, naming the holder, when another process holds it."""
    lock_file, holder_file = lock_paths(run)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise FtwError(busy_message(run, holder(run))) from None
    try:
        who = {"pid": os.getpid(), "command": command or " ".join(["ftw", *sys.argv[1:]]), "since": time.time()}
        write_text_exact(holder_file, json.dumps(who) + "\n")
        yield
    finally:
        holder_file.unlink(missing_ok=True)
        lock.release()


def busy_message(run: str, who: dict) -> str:
    if not who:
        return f"run {run} is being written by another ftw process. Wait for it to end, then run this again."
    since = time.strftime("%H:%M:%S", time.localtime(who.get("since", 0)))
    return (
        f"run {run} is being written by another ftw process (pid {who.get('pid')}: `{who.get('command')}`, "
        f"since {since}). Wait for it to end or stop it, then run this again; "
        f"ftw report --run {run} reads the run meanwhile."
    )
