"""`ftw lmstudio`: put the run's GGUF where LM Studio looks for models.

LM Studio lists GGUF files laid out as <models folder>/<publisher>/<model>/<file>.gguf
and builds prompts with the chat template inside the file, which `ftw gguf` made the
training format. The file is linked (a symlink; --copy copies it) as
ftw/<run>/<run>-<quant>.gguf. Without a models folder here, the layout to use on the
machine that runs LM Studio is printed instead.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from wrapper.core import artifacts, manifest
from wrapper.core.errors import FtwError
from wrapper.core.gguf_io import DEFAULT_QUANT

PUBLISHER = "ftw"


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
        if target.resolve() == gguf and not copy:
            return Placement(gguf, relative, target, already=True)
        target.unlink()
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    if copy:
        shutil.copyfile(gguf, partial)
    else:
        os.symlink(gguf, partial)
    partial.replace(target)
    return Placement(gguf, relative, target)
