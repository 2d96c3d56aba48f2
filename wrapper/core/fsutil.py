"""Files: writing so that nothing half-made ever looks finished (build beside the target, then
rename), and reading a file's digest."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
