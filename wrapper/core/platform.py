"""What differs between Windows and the POSIX systems, decided here and nowhere else.

Everything reads `sys.platform` when called (not at import), so that tests can take the Windows
branch on Linux with `monkeypatch.setattr(sys, "platform", "win32")`.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path


def is_windows() -> bool:
    return sys.platform == "win32"


def exe_name(name: str) -> str:
    """A program's file name: Windows runs only files with an extension it knows, here `.exe`."""
    return f"{name}.exe" if is_windows() else name


def venv_bin_dir() -> Path:
    """Where the venv's console scripts and the programs PyPI packages ship land: Scripts\\ on Windows."""
    return Path(sys.prefix) / "Scripts" if is_windows() else Path(sys.executable).parent


def vswhere() -> Path:
    """The Visual Studio installer's locator, at this place for every edition since VS 2017 (Windows
    reads environment names in any case; Python keeps them upper-case there)."""
    program_files = os.environ.get("PROGRAMFILES(X86)", r"C:\Program Files (x86)")
    return Path(program_files) / "Microsoft Visual Studio" / "Installer" / "vswhere.exe"


def msvc_found() -> bool:
    """MSVC on Windows: `cl` on PATH (a Developer prompt), or an installed Visual Studio, which CMake's
    Visual Studio generator finds without PATH."""
    return is_windows() and (shutil.which("cl") is not None or vswhere().is_file())
