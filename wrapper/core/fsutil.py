"""Files: writing so that nothing half-made ever looks finished (build beside the target, then
rename), and reading a file's digest."""

from __future__ import annotations

import gc
import hashlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from wrapper.core.errors import FtwError
from wrapper.core.platform import is_windows

# Windows refuses to replace a file another program has open. A virus scanner or indexer lets go
# within moments; a model server does not, and then the user has to act.
REPLACE_RETRY_S = 1.0
REPLACE_RETRY_PAUSE_S = 0.05
HELD_OPEN = "another program (Ollama, LM Studio, llama-server) may hold it open; close it there"


def default_mode(kind: int) -> int:
    """The permissions a plain open()/mkdir() would give under the current umask (kind: 0o666 or 0o777)."""
    umask = os.umask(0)
    os.umask(umask)
    return kind & ~umask


def write_text_exact(path: Path, text: str) -> None:
    """`text` as UTF-8, each newline one "\\n" byte on every system. Text mode would write "\\r\\n" on
    Windows, which the programs reading these files keep (Ollama's Modelfile parser keeps it inside a
    TEMPLATE), while ftw's own read-back, with universal newlines, would not notice."""
    with path.open("w", encoding="utf-8", newline="\n") as out:
        out.write(text)


def write_text_atomic(path: Path, text: str) -> None:
    """`text` as write_text_exact writes it, made beside `path` and renamed onto it."""
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
        os.chmod(tmp, default_mode(0o666))  # mkstemp's file is private (0600); the finished one is not
        replace_retrying(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_retrying(source: str | Path, target: str | Path, held_open: str = HELD_OPEN) -> None:
    """os.replace; on Windows retried for about a second while the target is held open, then an FtwError
    naming the file, and `held_open`: who may hold it and what to do (POSIX replaces an open file, so
    there it is one os.replace, as it always was)."""
    if not is_windows():
        os.replace(source, target)
        return
    try:
        os.replace(source, target)
        return
    except PermissionError:
        gc.collect()  # a GGUFReader's memory map of the file, no longer used, closes only when collected
    deadline = time.monotonic() + REPLACE_RETRY_S
    while True:
        try:
            os.replace(source, target)
            return
        except PermissionError as error:
            if time.monotonic() >= deadline:
                raise FtwError(in_use_message(Path(target), held_open)) from error
            time.sleep(REPLACE_RETRY_PAUSE_S)


def in_use_message(target: Path, held_open: str) -> str:
    command = " ".join(["ftw", *sys.argv[1:]])
    return f"{target} could not be replaced: {held_open}, then run: {command}"


@contextmanager
def staged_dir(target: Path) -> Iterator[Path]:
    """A fresh folder beside target; it replaces target if the block succeeds, else it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    staging.chmod(default_mode(0o777))  # mkdtemp makes the folder private (0700); the finished one is not
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(source: Path, target: Path) -> str:
    """`target` as a hard link to `source`, else a symbolic link, else a copy (another drive, Windows without
    Developer Mode, a file system without links); says which. Gigabytes of weights are never copied where a
    link will do."""
    try:
        os.link(source, target)
        return "hard link"
    except OSError:
        pass
    try:
        target.symlink_to(source.resolve())
        return "symbolic link"
    except OSError:
        shutil.copy2(source, target)
        return "copy"
