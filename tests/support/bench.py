"""The bench scripts, imported by the tests that check them."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from .runner import REPO

BENCH = REPO / "bench"


def bench_script(name: str) -> ModuleType:
    """bench/NAME.py as a module, imported with bench/ on the import path as when it runs (its first import
    is bench/repo_path.py). Appended, not prepended: nothing in bench/ hides a library of the same name."""
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))
    return importlib.import_module(name)
