"""`ftw lmstudio`: put the run's GGUF where LM Studio looks for models.

LM Studio lists GGUF files laid out as <models folder>/<publisher>/<model>/<file>.gguf
and builds prompts with the chat template inside the file, which `ftw gguf` made the
training format. The file is linked as ftw/<run>/<run>-<quant>.gguf: a symbolic link, else
(Windows without Developer Mode) a hard link, else (another drive) a copy; --copy copies it.
Without a models folder here, the layout to use on the machine that runs LM Studio is printed
instead.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from wrapper.core import artifacts, manifest
from wrapper.core.errors import FtwError
from wrapper.core.fsutil import replace_retrying
from wrapper.core.gguf_io import DEFAULT_QUANT

PUBLISHER = "ftw"
UNLOAD = "LM Studio may have the model loaded; unload the model in LM Studio (the eject button beside it)"


def default_models_dir() -> Path | None:
    """LM Studio's models folder: its settings' downloadsFolder, else ~/.lmstudio/models
    (LM Studio 0.3+), else ~/.cache/lm-studio/models (older versions); None if none exists."""
    home = Path.home()
    settings = home / ".lmstudio" / "settings.json"
    if settings.is_file():
        try:
            folder = json.loads(settings.read_text(encoding="utf-8")).get("downloadsFolder")
        except (ValueError, OSError):
            folder = None
        if folder and Path(folder).expanduser().is_dir():
            return Path(folder).expanduser()
    for candidate in (home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"):
        if candidate.is_dir():
            return candidate
    return None


@dataclass
class Placement:
    """Where the run's GGUF went for LM Studio."""

    gguf: Path
    relative: Path  # its path under a models folder
    target: Path | None  # None: no models folder here, nothing placed
    already: bool = False  # the link was there before
    how: str = ""  # "symbolic link", "hard link" or "copy"


def place(run_dir: Path, quant: str = DEFAULT_QUANT, models_dir: Path | None = None, copy: bool = False) -> Placement:
    gguf = manifest.artifact(run_dir, artifacts.gguf(quant)).resolve()
    relative = Path(PUBLISHER) / run_dir.name / gguf.name
    folder = models_dir or default_models_dir()
    if folder is None:
        return Placement(gguf, relative, None)
    if not folder.is_dir():
        raise FtwError(f"--dir {folder}: no such folder")
    target = folder / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        if not copy and is_link_to(target, gguf):
            return Placement(gguf, relative, target, already=True, how=link_kind(target))
        remove_placed(target, run_dir.name)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    if copy:
        shutil.copyfile(gguf, partial)
        how = "copy"
    else:
        how = link_or_copy(gguf, partial)
    replace_retrying(partial, target, held_open=UNLOAD)
    return Placement(gguf, relative, target, how=how)


def link_or_copy(gguf: Path, link: Path) -> str:
    """A symbolic link to `gguf`; where Windows refuses one (no Developer Mode, no admin) a hard link, the
    same file under a second name; where that fails too (another drive, a file system without links) a
    copy. Says which."""
    try:
        os.symlink(gguf, link)
        return "symbolic link"
    except OSError:
        pass
    try:
        os.link(gguf, link)
        return "hard link"
    except OSError:
        shutil.copyfile(gguf, link)
        return "copy"


def is_link_to(target: Path, gguf: Path) -> bool:
    """`target` is a symbolic link to the run's GGUF, or a hard link (the same file)."""
    try:
        return target.resolve() == gguf or os.path.samefile(target, gguf)
    except OSError:  # a dangling link
        return False


def link_kind(target: Path) -> str:
    return "symbolic link" if target.is_symlink() else "hard link"


def remove_placed(target: Path, run: str) -> None:
    """The file placed before. Windows refuses to delete a file LM Studio has loaded (a hard link or a copy)."""
    try:
        target.unlink()
    except PermissionError as error:
        raise FtwError(f"{target} could not be replaced: {UNLOAD}, then run: ftw lmstudio --run {run}") from error
