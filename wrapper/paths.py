"""Where the project's own files live; everything else is given on the command line."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECIPES_DIR = PROJECT_ROOT / "recipes"
PROFILES_DIR = RECIPES_DIR / "profiles"
TEMPLATES_DIR = PROJECT_ROOT / "templates"
LLAMA_CPP_DIR = PROJECT_ROOT / "vendor" / "llama.cpp"
MODELS_DIR = PROJECT_ROOT / "models"


def runs_dir() -> Path:
    """Run directories go under ./runs unless FTW_RUNS_DIR says otherwise (tests use a temp dir)."""
    return Path(os.environ.get("FTW_RUNS_DIR", PROJECT_ROOT / "runs")).resolve()
