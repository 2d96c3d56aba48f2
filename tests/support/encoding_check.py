"""A pytest plugin for a run under `python -X warn_default_encoding`: every text file that ftw's code or its
tests open without naming the encoding is listed, and the run fails (on Windows that file would be read or
written in the ANSI code page: cp1252 mangles Russian and Kazakh text).

Only calls made from wrapper/ or tests/ count: third-party libraries (dill, at import) warn too, and are not
ours to fix. Used by tests/test_windows_ready.py: pytest -p no:warnings -p tests.support.encoding_check ...
"""

from __future__ import annotations

import sys
import sysconfig
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OURS = (str(REPO / "wrapper"), str(REPO / "tests"))
STDLIB = sysconfig.get_paths()["stdlib"]
found: set[str] = set()


def first_caller_outside_the_standard_library() -> str | None:
    """file:line of the code that asked for the text file: the first frame not in Python's own library
    (pathlib, io, subprocess, this module's warnings machinery)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith((STDLIB, "<")) and name != __file__:
            return f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return None


def note_encoding_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, EncodingWarning):
        caller = first_caller_outside_the_standard_library()
        if caller and caller.startswith(OURS):
            found.add(caller.removeprefix(str(REPO) + "/"))


def pytest_configure(config) -> None:
    warnings.simplefilter("always", EncodingWarning)
    warnings.showwarning = note_encoding_warning


def pytest_sessionfinish(session, exitstatus) -> None:
    if found:
        sys.stderr.write("text opened without encoding=:\n" + "\n".join(sorted(found)) + "\n")
        session.exitstatus = 1
