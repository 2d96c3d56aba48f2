"""The repository, put on the import path: a bench script runs as `python bench/NAME.py`, which puts
only bench/ there. Imported first (`from repo_path import REPO`), before wrapper or tests.support."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
