"""Files and paths that behave the same on Windows: the Windows branches taken on Linux.

Nothing here runs on Windows: `sys.platform` is monkeypatched and Windows paths are PureWindowsPath,
so these tests hold the logic (names, layouts, fallbacks), not Windows' own behaviour.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from wrapper.core import platform
from wrapper.prompts import gorender


@pytest.fixture
def windows(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")


def test_programs_get_exe_on_windows_only(monkeypatch):
    assert platform.exe_name("go") == "go"
    monkeypatch.setattr(sys, "platform", "win32")
    assert platform.exe_name("go") == "go.exe"


def test_venv_programs_are_in_scripts_on_windows(windows, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    (tmp_path / "Scripts").mkdir()
    (tmp_path / "Scripts" / "go.exe").write_bytes(b"MZ")
    assert platform.venv_bin_dir() == tmp_path / "Scripts"
    assert gorender.go_binary() == str(tmp_path / "Scripts" / "go.exe")


def test_venv_programs_on_posix_are_beside_python():
    assert platform.venv_bin_dir() == Path(sys.executable).parent
