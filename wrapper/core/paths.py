"""Where the project's own files live, and where runs go; everything else is given on the command line."""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePath

from wrapper.core.errors import FtwError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
RECIPES_DIR = PROJECT_ROOT / "recipes"
PROFILES_DIR = RECIPES_DIR / "profiles"
TEMPLATES_DIR = PROJECT_ROOT / "templates"
LLAMA_CPP_DIR = PROJECT_ROOT / "vendor" / "llama.cpp"
MODELS_DIR = PROJECT_ROOT / "models"
BENCH_RESULTS_DIR = PROJECT_ROOT / "bench" / "results"
# Written by `ftw setup` beside the unpacked llama.cpp tree: its commit (wrapper/setup/llama_cpp.py).
LLAMA_CPP_COMMIT_FILE = "FTW_COMMIT"

# `ftw data synth` writes its rows here, inside the run directory; `ftw data prepare` reads them
# from there when neither --data nor the recipe's dataset names any file.
SYNTH_ROWS = Path("synth") / "synth.jsonl"

# ASCII: the run's name also names its GGUF files and the Ollama model, which takes no other.
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Windows' device names: no file or folder there may take one, in any case, with any extension; a run
# folder (or the GGUFs and Hub repo named after it) moved to Windows could not exist.
WINDOWS_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT") for n in range(10))}
)


def runs_dir() -> Path:
    """Run directories go under ./runs unless FTW_RUNS_DIR says otherwise (tests use a temp dir)."""
    return Path(os.environ.get("FTW_RUNS_DIR", PROJECT_ROOT / "runs")).resolve()


def check_run_name(run: str) -> None:
    if not RUN_NAME.fullmatch(run):
        raise FtwError(
            f"--run {run!r}: use ASCII letters, digits, '.', '_' or '-' (it names the folder under runs/, "
            f"the GGUF files and the Ollama model); the runs folder itself may be any path (FTW_RUNS_DIR)"
        )
    device = run.split(".")[0].upper()
    if device in WINDOWS_DEVICE_NAMES:
        raise FtwError(
            f"--run {run!r}: {device} is a device name on Windows, where no folder or file may be called "
            f"that (with any extension), so the run's folder and GGUF files could not exist there. "
            f"Pick another name, e.g.: --run my-{run}"
        )


def llama_cpp_commit(llama_cpp_dir: Path = LLAMA_CPP_DIR) -> str | None:
    """The commit of the unpacked llama.cpp tree, or None before `ftw setup`."""
    marker = llama_cpp_dir / LLAMA_CPP_COMMIT_FILE
    if not marker.is_file():
        return None
    return marker.read_text(encoding="utf-8").split()[0]


def modelfile_path(path: Path, run_dir: Path) -> str:
    """A file as a Modelfile names it, with "/" on every system (the same Modelfile is read on each): one
    in the run folder relative to it (the folder can move), one elsewhere by its absolute path (it stays
    put when the run folder moves; on Windows it may be on another drive, where no relative path exists).
    The paths are taken as given, not resolved: a run's gguf/ that links elsewhere is still ./gguf/."""
    return named_from(Path(os.path.abspath(path)), Path(os.path.abspath(run_dir)))


def named_from(path: PurePath, folder: PurePath) -> str:
    """`path` as ./a/b when it is inside `folder`, else as itself; both absolute, "/" either way."""
    return f"./{path.relative_to(folder).as_posix()}" if path.is_relative_to(folder) else path.as_posix()


def relative_or_absolute(path: Path, start: Path) -> str:
    """os.path.relpath, or `path` itself where no relative path exists (Windows: another drive)."""
    try:
        return os.path.relpath(path, start)
    except ValueError:
        return str(path)


def display_path(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)
